"""The fleet budget's arithmetic and its configuration: bad values get errors naming the fix.

No etcd is needed here: every case fails before a request leaves the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import FleetBudgetConfig
from remediations.coordination import FleetBudget, budget_for

ENDPOINT = "http://127.0.0.1:2379"


@pytest.mark.parametrize(
    ("count", "percent", "members", "budget"),
    [
        (3, None, 0, 3),  # a count does not depend on who is alive
        (None, 25, 10, 2),  # 2.5 rounds down
        (None, 10, 15, 1),
        (None, 5, 4, 1),  # a percentage above 0 still allows one host...
        (None, 5, 0, 0),  # ...but not in an empty group
        (None, 100, 7, 7),
        (None, 30, 10, 3),  # no float drift: 30% of 10 is 3, not 2
        (5, 10, 200, 5),  # the smaller of both
        (5, 10, 20, 2),
        (0, 50, 10, 0),  # a count of 0 is a fleet-wide stop
    ],
)
def test_the_budget_is_the_smaller_of_count_and_share_of_live_members(
    count: int | None, percent: float | None, members: int, budget: int
) -> None:
    assert budget_for(count, percent, members) == budget


def _config(**values: Any) -> FleetBudgetConfig:
    return FleetBudgetConfig.model_validate(
        {"enabled": True, "endpoints": [ENDPOINT], "max_disruptive": 3, **values}
    )


def test_a_valid_budget_keeps_its_values() -> None:
    config = _config(
        endpoints=["https://etcd-1.example.com:2379", "https://etcd-2.example.com:2379"],
        max_disruptive_percent=10,
        lease_ttl="30s",
        group="rack-7",
    )
    assert config.endpoints[1] == "https://etcd-2.example.com:2379"
    assert config.lease_ttl.total_seconds() == 30
    assert not FleetBudgetConfig().enabled  # off unless configured


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"endpoints": ["etcd-1:2379"]}, "invalid etcd endpoint 'etcd-1:2379'"),
        ({"endpoints": ["ftp://etcd:2379"]}, "use http://HOST:PORT or https://HOST:PORT"),
        ({"endpoints": ["http://etcd"]}, "invalid etcd endpoint 'http://etcd'"),
        ({"endpoints": ["http://etcd:99999"]}, "invalid etcd endpoint"),
        ({"endpoints": ["http://etcd:2379/v3"]}, "no path or user info"),
        ({"endpoints": []}, "enabled needs endpoints"),
        ({"max_disruptive_percent": 150}, "less than or equal to 100"),
        ({"max_disruptive_percent": 0}, "greater than 0"),
        ({"max_disruptive": -1}, "greater than or equal to 0"),
        ({"max_disruptive": None}, "enabled needs max_disruptive, max_disruptive_percent"),
        ({"group": "a/b"}, "group 'a/b' must be letters, digits"),
        ({"prefix": "budget/"}, "prefix 'budget/' must start with '/'"),
        ({"lease_ttl": "1s"}, "lease_ttl must be between 2s and 1h"),
        ({"lease_ttl": "6s", "request_timeout": "5s"}, "at most a third of lease_ttl"),
        ({"password": "x"}, "password is set without username"),
        ({"cert_file": "/etc/c.pem"}, "cert_file and key_file go together"),
        ({"slots": 3}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_budget_is_refused_naming_the_problem(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        _config(**values)
    assert message in str(err.value)


@pytest.mark.asyncio
async def test_a_missing_tls_file_refuses_disruptive_runs_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "etcd-ca.pem"
    config = _config(endpoints=["https://127.0.0.1:2379"], ca_file=str(missing), slot_wait="0s")
    budget = FleetBudget(config, node="n1")
    try:
        outcome = await budget.acquire("r1")
    finally:
        await budget.aclose()
    assert outcome.slot is None
    assert outcome.cause == "etcd_unreachable"
    assert outcome.decision.reason.startswith("etcd unreachable: cannot load the TLS files")
    assert str(missing) in outcome.decision.reason
