"""Hosts without the ``nodemedic[kubernetes]`` extra: nothing imports lightkube, and where
Kubernetes is configured anyway the agent and the actions say what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

_PROBE = textwrap.dedent(
    """
    import asyncio, logging, sys
    sys.modules["lightkube"] = None  # as if the extra were not installed
    import agent.runtime, remediations.actions.registry  # import without lightkube
    logging.getLogger("agent.kube_status").addHandler(logging.StreamHandler(sys.stdout))
    from agent.config import load_settings
    from agent.kube_status import node_status_mirror
    from remediations.actions.base import ActionError, NoParams
    from remediations.actions.kubernetes import UncordonKubernetesNode
    from tests.actions import RecordingServices, step

    import os
    os.environ["NODEMEDIC_KUBERNETES__ENABLED"] = "true"
    settings = load_settings(None)
    print("mirror:", node_status_mirror(settings, lambda: []))
    ctx = step(NoParams(), services=RecordingServices(kubernetes=settings.kubernetes))
    try:
        asyncio.run(UncordonKubernetesNode().precheck(ctx))
    except ActionError as err:
        print("action:", err)
    print("imported:", sorted(m for m in sys.modules if m.startswith(("lightkube", "httpx2"))))
    """
)


def test_without_lightkube_the_agent_imports_and_says_what_to_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    hint = (
        "the lightkube package is not installed; "
        "install it with: pip install 'nodemedic[kubernetes]'"
    )
    assert f"kubernetes: {hint}; NodeConditions and Events are off" in output
    assert "mirror: None" in output
    assert f"action: undrain.kubernetes: kubernetes: {hint}" in output
    assert "imported: ['lightkube']" in output, "only the blocked name, nothing of the client"
