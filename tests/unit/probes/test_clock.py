"""ClockProbe: adjtimex status bits, offset units and failures."""

from __future__ import annotations

import errno

import pytest

from agent.errors import ProbeError
from agent.probes.clock import STA_NANO, STA_UNSYNC, AdjtimexResult, ClockProbe, adjtimex

from .fakes import Closing, by_metric

STA_PLL = 0x0001
TIME_OK = 0


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        (
            AdjtimexResult(
                result=TIME_OK, status=STA_PLL | STA_NANO, offset=-250_000, maxerror=1500
            ),
            {"synchronised": 1.0, "offset_seconds": -0.00025, "maxerror_seconds": 0.0015},
        ),
        (
            AdjtimexResult(result=TIME_OK, status=STA_PLL, offset=250, maxerror=16_000),
            {"synchronised": 1.0, "offset_seconds": 0.00025, "maxerror_seconds": 0.016},
        ),
        (
            AdjtimexResult(result=TIME_OK, status=STA_UNSYNC, offset=0, maxerror=16_000_000),
            {"synchronised": 0.0, "offset_seconds": 0.0, "maxerror_seconds": 16.0},
        ),
        (
            AdjtimexResult(result=5, status=STA_PLL, offset=0, maxerror=16_000_000),
            {"synchronised": 0.0, "offset_seconds": 0.0, "maxerror_seconds": 16.0},
        ),
    ],
    ids=["synced-nanoseconds", "synced-microseconds", "sta-unsync", "time-error"],
)
@pytest.mark.asyncio
async def test_clock_state_from_adjtimex(
    reading: AdjtimexResult, expected: dict[str, float], closing: Closing
) -> None:
    probe = closing(ClockProbe(adjtimex=lambda: reading))

    values = by_metric(await probe.sample())

    assert values == {
        f"nodemedic_clock_{name}": pytest.approx(value) for name, value in expected.items()
    }


@pytest.mark.asyncio
async def test_denied_adjtimex_is_a_probe_error(closing: Closing) -> None:
    def denied() -> AdjtimexResult:
        raise OSError(errno.EPERM, "adjtimex: Operation not permitted")

    probe = closing(ClockProbe(adjtimex=denied))

    with pytest.raises(ProbeError, match=r"^probe clock: adjtimex: Operation not permitted$"):
        await probe.sample()


def test_real_adjtimex_reads_a_plausible_state() -> None:
    reading = adjtimex()

    assert 0 <= reading.result <= 5
    assert 0 <= reading.maxerror <= 16_000_000  # the kernel caps maxerror at 16 s
