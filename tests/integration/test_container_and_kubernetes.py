"""The container image recipe and the Kubernetes manifests in packaging/.

Neither can run here (no container runtime, no cluster), so they are checked offline:
the manifests against the Kubernetes OpenAPI schemas that ``kubernetes-validate``
bundles (strict: unknown fields are errors), the Dockerfile structurally (no well-kept
Dockerfile linter is packaged for Debian 12: every COPY source exists in the build
context, the entry point is the console script, the user is not root), and both against
the agent: the config they ship is valid and the ports, user and node name agree.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent import __version__
from agent.config import load_settings
from tests.conftest import REPO

KUBERNETES = REPO / "packaging" / "kubernetes"
DOCKERFILE = REPO / "packaging" / "container" / "Dockerfile"
OLDEST_KUBERNETES = "1.28"
"""The oldest Kubernetes the manifests promise to work on (besides the newest bundled)."""


def _documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                yield path, document


def _kind(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _agent_container() -> dict[str, Any]:
    pod = _kind("DaemonSet")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "nodemedic"]
    found: dict[str, Any] = container
    return found


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_against_the_kubernetes_schema(version: str) -> None:
    documents = list(_documents())

    assert {doc["kind"] for _, doc in documents} >= {"DaemonSet", "ServiceAccount", "ConfigMap"}
    for path, document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{path.name}: {'.'.join(map(str, err.path))}: {err.message}")


def test_schema_validation_catches_a_misspelt_field() -> None:
    daemonset = _kind("DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostPid"] = True

    with pytest.raises(kubernetes_validate.ValidationError, match="hostPid"):
        kubernetes_validate.validate(daemonset, OLDEST_KUBERNETES, strict=True)


def test_daemonset_sees_the_host_read_only() -> None:
    pod = _kind("DaemonSet")["spec"]["template"]["spec"]
    container = _agent_container()

    assert pod["hostPID"] is True
    host_paths = {
        volume["name"]: volume["hostPath"]["path"]
        for volume in pod["volumes"]
        if "hostPath" in volume
    }
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    for path in ("/proc", "/sys"):
        (name,) = [name for name, host in host_paths.items() if host == path]
        assert mounts[name]["readOnly"] is True, f"host {path} must be mounted read-only"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_node_name_comes_from_the_downward_api_in_the_agents_env_syntax(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {var["name"]: var for var in _agent_container()["env"]}

    node = env["NODEMEDIC_NODE__NAME"]
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # What the kubelet sets really configures the agent (NODEMEDIC_ + the key path).
    monkeypatch.setenv("NODEMEDIC_NODE__NAME", "worker-7")
    monkeypatch.setenv(
        "NODEMEDIC_API__LISTEN",
        env["NODEMEDIC_API__LISTEN"]["value"].replace("$(POD_IP)", "10.0.0.7"),
    )
    settings = load_settings(None)
    assert settings.node.name == "worker-7"
    assert (settings.api.host, settings.api.port) == ("10.0.0.7", 9464)


def test_probes_resources_and_the_named_metrics_port() -> None:
    container = _agent_container()
    template = _kind("DaemonSet")["spec"]["template"]

    (port,) = container["ports"]
    assert port["name"] == "metrics"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port["containerPort"])
    env = {var["name"]: var.get("value", "") for var in container["env"]}
    assert env["NODEMEDIC_API__LISTEN"].endswith(f":{port['containerPort']}")
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind


def test_configmap_and_image_configs_are_valid_agent_configs(tmp_path: Path) -> None:
    configs = {
        "configmap": _kind("ConfigMap")["data"]["nodemedic.yaml"],
        "image": (REPO / "packaging/container/nodemedic.yaml").read_text(encoding="utf-8"),
    }
    for name, text in configs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        settings = load_settings(path, environ={})
        assert str(settings.state_dir) == "/var/lib/nodemedic", name


def test_images_are_tagged_with_the_agents_version() -> None:
    pod = _kind("DaemonSet")["spec"]["template"]["spec"]

    for container in pod["containers"] + pod.get("initContainers", []):
        assert container["image"].endswith(f":{__version__}"), container["name"]


def test_dockerfile_copies_only_what_exists_in_the_build_context() -> None:
    copies = [args for instruction, args in _instructions() if instruction == "COPY"]

    assert copies
    for args in copies:
        words = [word for word in args.split() if not word.startswith("--")]
        if "--from=" in args:
            continue  # from an earlier stage, not the context
        for source in words[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the build context"


def test_dockerfile_runs_the_console_script_as_a_non_root_user() -> None:
    instructions = _instructions()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]

    stages = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM") :]
    entrypoint = [args for ins, args in final if ins == "ENTRYPOINT"]
    cmd = [args for ins, args in final if ins == "CMD"]
    user = [args for ins, args in final if ins == "USER"]
    assert entrypoint == ['["nodemedic"]']
    assert "nodemedic" in scripts
    assert cmd == ['["run", "--config", "/etc/nodemedic/nodemedic.yaml"]']
    copied = [args.split()[-1] for ins, args in final if ins == "COPY"]
    assert "/etc/nodemedic/nodemedic.yaml" in copied
    # The same numeric user the DaemonSet runs as.
    uid = _kind("DaemonSet")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user == [f"{uid}:{uid}"]
    assert uid != 0
    # The DaemonSet passes the same arguments the image would.
    assert _agent_container()["args"] == ["run", "--config", "/etc/nodemedic/nodemedic.yaml"]


def test_the_agents_account_may_do_exactly_what_the_kubernetes_integration_does() -> None:
    role = _kind("ClusterRole")
    binding = _kind("ClusterRoleBinding")
    account = _kind("ServiceAccount")
    pod = _kind("DaemonSet")["spec"]["template"]["spec"]

    granted = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # agent/kube_client.py: get/cordon the Node, patch its status, list and read pods,
    # evict (never delete) them, create Events.
    assert granted == {
        ("nodes", "get"),
        ("nodes", "patch"),
        ("nodes/status", "patch"),
        ("pods", "get"),
        ("pods", "list"),
        ("pods/eviction", "create"),
        ("events", "create"),
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
