"""``drain.kubernetes`` and ``undrain.kubernetes`` against :class:`FakeKubeApiServer`.

The API server is a fake (no real Kubernetes API can run here; see tests/fake_kube.py),
reached over real HTTP on loopback through the real lightkube client, with a kubeconfig
the test writes (http, bearer token). What is checked is what ``kubectl drain
--ignore-daemonsets`` and ``kubectl uncordon`` would do to the Node and its pods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError

from agent.config_drain import DrainConfig
from agent.config_kubernetes import KubernetesConfig
from remediations.actions.base import ActionError, NoParams
from remediations.actions.drain import DrainNode, UndrainNode
from remediations.actions.kubernetes import DrainKubernetesNode, DrainParams, UncordonKubernetesNode
from remediations.actions.registry import ACTIONS
from tests.actions import RecordingServices, step
from tests.fake_kube import PDB_MESSAGE, FakeKubeApiServer

NODE = "worker-1"


@pytest_asyncio.fixture
async def kube() -> AsyncIterator[FakeKubeApiServer]:
    """The fake API server with this node and one other."""
    server = FakeKubeApiServer()
    await server.start()
    server.add_node(NODE)
    server.add_node("worker-2")
    try:
        yield server
    finally:
        await server.stop()


def _services(server: FakeKubeApiServer, tmp_path: Path, **drain: Any) -> RecordingServices:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    config = KubernetesConfig.model_validate(
        {
            "kubeconfig": str(kubeconfig),
            "node_name": NODE,
            "drain": {"retry_interval": "100ms", "poll_interval": "50ms", **drain},
        }
    )
    return RecordingServices(node="ignored-host-name", kubernetes=config)


async def _drain(services: RecordingServices, *, dry_run: bool = False, **params: Any) -> Any:
    action = DrainKubernetesNode()
    ctx = step(DrainParams.model_validate(params), dry_run=dry_run, services=services)
    await action.precheck(ctx)
    result = await action.apply(ctx)
    verified = None if dry_run else await action.verify(ctx)
    return result, verified


async def _undrain(services: RecordingServices, *, dry_run: bool = False) -> Any:
    action = UncordonKubernetesNode()
    ctx = step(NoParams(), dry_run=dry_run, services=services)
    await action.precheck(ctx)
    result = await action.apply(ctx)
    return result, None if dry_run else await action.verify(ctx)


def _a_busy_node(kube: FakeKubeApiServer) -> None:
    kube.add_pod("shop", "web-1", node=NODE)
    kube.add_pod("shop", "web-2", node=NODE, owner="StatefulSet")
    kube.add_pod("shop", "batch-1", node=NODE, owner="Job", phase="Succeeded")
    kube.add_pod("kube-system", "fluentd-x1", node=NODE, owner="DaemonSet")
    kube.add_pod("kube-system", "etcd-worker-1", node=NODE, owner="Node", mirror=True)
    kube.add_pod("shop", "web-3", node="worker-2")


@pytest.mark.asyncio
async def test_drain_cordons_evicts_and_leaves_daemonset_and_mirror_pods(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    _a_busy_node(kube)

    result, verified = await _drain(_services(kube, tmp_path))

    assert kube.node(NODE)["spec"]["unschedulable"] is True
    assert "unschedulable" not in kube.node("worker-2")["spec"]
    assert kube.pod_names() == {
        "kube-system/fluentd-x1",
        "kube-system/etcd-worker-1",
        "shop/web-3",
    }
    assert set(kube.evictions) == {"shop/web-1", "shop/web-2", "shop/batch-1"}
    assert result.ok
    assert result.summary == (
        f"drained node {NODE}: cordoned, evicted 3 pods (shop/batch-1, shop/web-1, shop/web-2)"
        "; left 1 DaemonSet pod, 1 mirror pod in place"
    )
    assert verified.ok, verified.summary
    # Evictions, not deletes: the PodDisruptionBudget path of the API server.
    assert not [r for r in kube.requests if r[0] == "DELETE"]
    cordon = [r for r in kube.requests if r[0] == "PATCH"]
    assert cordon == [("PATCH", f"/api/v1/nodes/{NODE}?fieldManager=nodemedic", cordon[0][2])]
    assert cordon[0][2] == "application/strategic-merge-patch+json"


@pytest.mark.asyncio
async def test_a_pod_its_budget_protects_is_asked_again_until_the_budget_allows_it(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    kube.add_pod("shop", "web-1", node=NODE)
    kube.add_pod("shop", "web-2", node=NODE)
    kube.block("shop", "web-1", times=3)

    result, verified = await _drain(_services(kube, tmp_path))

    assert result.ok
    assert verified.ok
    assert kube.evictions == {"shop/web-1": 4, "shop/web-2": 1}
    assert kube.pod_names() == set()


@pytest.mark.asyncio
async def test_a_budget_that_never_allows_fails_the_drain_at_the_deadline_naming_the_pod(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    kube.add_pod("shop", "web-1", node=NODE)
    kube.add_pod("shop", "db-0", node=NODE, owner="StatefulSet")
    kube.block("shop", "db-0")
    services = _services(kube, tmp_path, eviction_timeout="1s")

    with pytest.raises(ActionError) as caught:
        await _drain(services)

    message = str(caught.value)
    assert "pod shop/db-0 was not evicted before the deadline" in message
    assert PDB_MESSAGE in message
    assert "web-1" not in message
    assert "the node stays cordoned" in message
    assert kube.evictions["shop/db-0"] >= 2, "asked again after the 429"
    assert kube.pod_names() == {"shop/db-0"}
    assert kube.node(NODE)["spec"]["unschedulable"] is True  # as kubectl leaves it


@pytest.mark.asyncio
async def test_drain_returns_only_once_evicted_pods_have_left(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    kube.add_pod("shop", "web-1", node=NODE)
    kube.eviction_delay = 0.6  # terminating for a while, like a pod with a grace period

    result, _ = await _drain(_services(kube, tmp_path))

    assert result.ok
    assert kube.pod_names() == set()
    reads = [r for r in kube.requests if r[0] == "GET" and r[1].startswith("/api/v1/namespaces")]
    assert len(reads) >= 2, "the drain polled the pod until it was gone"


@pytest.mark.asyncio
async def test_a_pod_that_does_not_leave_in_time_fails_the_drain(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    kube.add_pod("shop", "web-1", node=NODE)
    kube.eviction_delay = 30.0

    with pytest.raises(ActionError, match=r"did not leave before the deadline: shop/web-1"):
        await _drain(_services(kube, tmp_path, eviction_timeout="700ms"))


@pytest.mark.asyncio
async def test_undrain_uncordons_and_both_actions_are_idempotent(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    _a_busy_node(kube)
    services = _services(kube, tmp_path)

    await _drain(services)
    again, verified = await _drain(services)
    assert again.summary == (
        f"node {NODE} is drained: cordoned, no pods to evict"
        "; left 1 DaemonSet pod, 1 mirror pod in place"
    )
    assert verified.ok
    patches = [r for r in kube.requests if r[0] == "PATCH"]
    assert len(patches) == 1, "the second drain sent no cordon"

    result, verified = await _undrain(services)
    assert result.summary == f"uncordoned node {NODE}"
    assert verified.ok
    assert "unschedulable" not in kube.node(NODE)["spec"]  # removed, as kubectl's patch does
    again, _ = await _undrain(services)
    assert again.summary == f"node {NODE} is already schedulable"
    assert len([r for r in kube.requests if r[0] == "PATCH"]) == 2


@pytest.mark.asyncio
async def test_dry_run_says_what_it_would_do_and_changes_nothing(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    _a_busy_node(kube)
    services = _services(kube, tmp_path)
    before = kube.pod_names()

    result, _ = await _drain(services, dry_run=True)

    assert result.summary == (
        f"would cordon node {NODE} and evict 3 pods (shop/batch-1, shop/web-1, shop/web-2)"
        "; leave 1 DaemonSet pod, 1 mirror pod"
    )
    assert kube.pod_names() == before
    assert "unschedulable" not in kube.node(NODE)["spec"]
    assert not [r for r in kube.requests if r[0] in {"PATCH", "POST"}]

    kube.add_node(NODE, unschedulable=True)
    result, _ = await _undrain(services, dry_run=True)
    assert result.summary == f"would uncordon node {NODE} (now cordoned)"
    assert kube.node(NODE)["spec"]["unschedulable"] is True


@pytest.mark.asyncio
async def test_pods_with_local_data_or_no_controller_refuse_the_drain_before_it_cordons(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    kube.add_pod("shop", "cache-1", node=NODE, emptydir=True)
    kube.add_pod("shop", "debug", node=NODE, owner=None)

    with pytest.raises(ActionError) as caught:
        await _drain(_services(kube, tmp_path))

    message = str(caught.value)
    assert "shop/cache-1: its emptyDir data would be lost" in message
    assert "kubernetes.drain.delete_emptydir_data" in message
    assert "shop/debug: no controller would recreate it" in message
    assert "kubernetes.drain.evict_unmanaged_pods" in message
    assert "unschedulable" not in kube.node(NODE)["spec"]
    assert not kube.evictions

    allowed = _services(kube, tmp_path, delete_emptydir_data=True, evict_unmanaged_pods=True)
    result, _ = await _drain(allowed)
    assert result.ok
    assert kube.pod_names() == set()


@pytest.mark.asyncio
async def test_a_wrong_node_name_a_bad_token_or_no_api_give_clear_errors(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    services = _services(kube, tmp_path)
    wrong = RecordingServices(
        kubernetes=services.kubernetes.model_copy(update={"node_name": "nosuch"})
    )
    with pytest.raises(ActionError, match=r"node nosuch does not exist in Kubernetes"):
        await _drain(wrong)

    kube.write_kubeconfig(tmp_path / "kubeconfig", token="wrong")  # noqa: S106 - a test token
    with pytest.raises(ActionError, match=r"get node worker-1: 401 Unauthorized"):
        await _drain(services)

    kube.write_kubeconfig(tmp_path / "kubeconfig")
    await kube.stop()
    with pytest.raises(ActionError, match=r"drain.kubernetes: get node worker-1: "):
        await _drain(services)

    (tmp_path / "kubeconfig").write_text("clusters: [", encoding="utf-8")
    with pytest.raises(ActionError, match=r"cannot use kubeconfig .*kubeconfig"):
        await _undrain(services)

    nowhere = RecordingServices(kubernetes=KubernetesConfig())  # no kubeconfig, not in a pod
    with pytest.raises(ActionError, match=r"cannot use the pod's service account"):
        await _undrain(nowhere)


def test_both_actions_are_registered_with_honest_flags_and_strict_params() -> None:
    assert ACTIONS["drain.kubernetes"].__qualname__ == DrainKubernetesNode.__qualname__
    assert ACTIONS["undrain.kubernetes"].__qualname__ == UncordonKubernetesNode.__qualname__
    assert DrainKubernetesNode.disruptive
    assert DrainKubernetesNode.idempotent
    assert not UncordonKubernetesNode.disruptive
    assert UncordonKubernetesNode.idempotent

    assert DrainParams.model_validate({"eviction_timeout": "2m"}).eviction_timeout is not None
    with pytest.raises(ValidationError, match="invalid duration 'soon'"):
        DrainParams.model_validate({"eviction_timeout": "soon"})
    with pytest.raises(ValidationError, match="force"):
        DrainParams.model_validate({"force": True})


@pytest.mark.asyncio
async def test_drain_node_with_method_kubernetes_drains_and_undrains_through_these_actions(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    _a_busy_node(kube)
    services = _services(kube, tmp_path)
    services.drain = DrainConfig(method="kubernetes")

    for action, verb in ((DrainNode(), "drain"), (UndrainNode(), "undrain")):
        ctx = step(NoParams(), services=services)
        await action.precheck(ctx)
        result = await action.apply(ctx)
        verified = await action.verify(ctx)
        assert result.details["method"] == f"{verb}.kubernetes"
        assert verified.ok, verified.summary
        if verb == "drain":
            assert kube.node(NODE)["spec"]["unschedulable"] is True
            assert "shop/web-1" not in kube.pod_names()

    assert "unschedulable" not in kube.node(NODE)["spec"]
