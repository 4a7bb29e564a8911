"""GpuProbe over NVML: readings, unsupported and failing fields, lost GPUs, XID events.

NVML is ``FakeNvml`` (see tests/unit/probes/fake_nvml.py): there is no NVIDIA GPU or driver
on this machine or CI's, so the real library cannot run. The fake returns pynvml's own
ctypes types and raises pynvml's own ``NVMLError`` subclasses with NVML's error codes; the
probe is handed it where it would otherwise import ``pynvml``.
"""

from __future__ import annotations

import logging

import pynvml
import pytest

from agent.model import LabelSet, labelset
from agent.probes.gpu import GpuProbe

from .fake_nvml import FakeGpu, FakeNvml
from .fakes import Closing, ManualClock, assert_catalog_conformant, by_series

A100 = "NVIDIA A100-SXM4-80GB"
UUID0 = "GPU-5a3b1f6c-1111-2222-3333-444455556666"
UUID1 = "GPU-9e0d7c2a-7777-8888-9999-aaaabbbbcccc"
REASONS = (
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
    "board_limit",
    "reliability",
    "other",
)


def gpu_labels(index: int, uuid: str, name: str = A100, **extra: str) -> LabelSet:
    """The labels of a GPU's series."""
    return labelset(gpu=str(index), uuid=uuid, name=name, **extra)


def two_gpus() -> FakeNvml:
    """A busy, warm, throttled A100 with ECC errors and an idle one."""
    return FakeNvml(
        [
            FakeGpu(
                uuid=UUID0,
                temperature=71,
                utilisation=(93, 41),
                memory_used=60 * 2**30,
                power_mw=312_456,
                ecc_corrected=5,
                ecc_uncorrected=1,
                clock_event_reasons=(
                    pynvml.nvmlClocksEventReasonSwPowerCap
                    | pynvml.nvmlClocksEventReasonHwThermalSlowdown
                ),
            ),
            FakeGpu(uuid=UUID1, clock_event_reasons=pynvml.nvmlClocksEventReasonGpuIdle),
        ]
    )


def probe_for(
    nvml: FakeNvml, closing: Closing, *, xid_window: float = 600.0, clock: ManualClock | None = None
) -> GpuProbe:
    """A GPU probe over ``nvml``, closed when the test ends."""
    return closing(GpuProbe(nvml=nvml, xid_window=xid_window, clock=clock or ManualClock()))


@pytest.mark.asyncio
async def test_every_reading_of_every_gpu(closing: Closing) -> None:
    probe = probe_for(two_gpus(), closing)

    samples = await probe.sample()

    assert_catalog_conformant("gpu", samples)
    values = by_series(samples)
    g0 = gpu_labels(0, UUID0)
    assert values[("nodemedic_gpu_devices", ())] == 2
    assert values[("nodemedic_gpu_up", g0)] == 1
    assert values[("nodemedic_gpu_temperature_celsius", g0)] == 71
    assert values[("nodemedic_gpu_utilisation_ratio", g0)] == pytest.approx(0.93)
    assert values[("nodemedic_gpu_memory_utilisation_ratio", g0)] == pytest.approx(0.41)
    assert values[("nodemedic_gpu_memory_used_bytes", g0)] == 60 * 2**30
    assert values[("nodemedic_gpu_memory_total_bytes", g0)] == 80 * 2**30
    assert values[("nodemedic_gpu_power_watts", g0)] == pytest.approx(312.456)
    assert values[("nodemedic_gpu_ecc_corrected_errors_total", g0)] == 5
    assert values[("nodemedic_gpu_ecc_uncorrected_errors_total", g0)] == 1
    throttled = {
        reason
        for reason in REASONS
        if values[("nodemedic_gpu_throttle_reason_active", gpu_labels(0, UUID0, reason=reason))]
    }
    assert throttled == {"sw_power_cap", "hw_thermal_slowdown"}
    idle = gpu_labels(1, UUID1, reason="gpu_idle")
    assert values[("nodemedic_gpu_throttle_reason_active", idle)] == 1
    for metric in ("total", "recent"):
        assert values[(f"nodemedic_gpu_xid_errors_{metric}", g0)] == 0
    assert values[("nodemedic_gpu_xid_last_code", g0)] == 0
    # 1 device count + per GPU: up, 8 readings, 12 reasons, 3 XID series.
    assert len(samples) == 1 + 2 * (1 + 8 + 12 + 3)


@pytest.mark.asyncio
async def test_unknown_reason_bits_show_as_other(closing: Closing) -> None:
    nvml = FakeNvml([FakeGpu(uuid=UUID0, clock_event_reasons=0x8000 | 0x1)])
    values = by_series(await probe_for(nvml, closing).sample())

    active = {
        reason
        for reason in REASONS
        if values[("nodemedic_gpu_throttle_reason_active", gpu_labels(0, UUID0, reason=reason))]
    }
    assert active == {"gpu_idle", "other"}


@pytest.mark.asyncio
async def test_a_driver_before_535_reports_reasons_under_the_old_name(closing: Closing) -> None:
    nvml = FakeNvml(
        [FakeGpu(uuid=UUID0, clock_event_reasons=pynvml.nvmlClocksThrottleReasonHwSlowdown)],
        legacy_driver=True,
    )
    probe = probe_for(nvml, closing)

    for _ in range(2):
        values = by_series(await probe.sample())
        key = ("nodemedic_gpu_throttle_reason_active", gpu_labels(0, UUID0, reason="hw_slowdown"))
        assert values[key] == 1


@pytest.mark.asyncio
async def test_unsupported_readings_are_left_out_without_a_word(
    closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    # A consumer card: no ECC, no power sensor, and no XID events.
    unsupported = pynvml.NVML_ERROR_NOT_SUPPORTED
    card = FakeGpu(
        uuid=UUID0,
        name="NVIDIA GeForce RTX 4090",
        failures={
            "nvmlDeviceGetTotalEccErrors": unsupported,
            "nvmlDeviceGetPowerUsage": unsupported,
            "nvmlDeviceRegisterEvents": unsupported,
        },
    )
    probe = probe_for(FakeNvml([card]), closing)

    with caplog.at_level(logging.DEBUG, logger="agent.probes.gpu"):
        for _ in range(3):
            samples = await probe.sample()

    assert_catalog_conformant("gpu", samples)
    metrics = {s.metric for s in samples}
    assert "nodemedic_gpu_temperature_celsius" in metrics
    assert not {m for m in metrics if "ecc" in m or "power" in m or "xid" in m}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.asyncio
async def test_a_failing_reading_is_left_out_and_logged_once_until_it_recovers(
    closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = two_gpus()
    nvml.gpus[0].failures["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_UNKNOWN
    probe = probe_for(nvml, closing)
    power = ("nodemedic_gpu_power_watts", gpu_labels(0, UUID0))

    with caplog.at_level(logging.INFO, logger="agent.probes.gpu"):
        for _ in range(3):
            values = by_series(await probe.sample())
            assert power not in values
            assert values[("nodemedic_gpu_temperature_celsius", gpu_labels(0, UUID0))] == 71
        nvml.gpus[0].failures.clear()
        for _ in range(2):
            values = by_series(await probe.sample())

    assert values[power] == pytest.approx(312.456)
    messages = [r.getMessage() for r in caplog.records if "power" in r.getMessage()]
    assert messages == [
        f"probe gpu: GPU 0 ({UUID0}): cannot read power: Unknown Error; leaving it out",
        f"probe gpu: GPU 0 ({UUID0}): power readable again",
    ]


@pytest.mark.asyncio
async def test_a_lost_gpu_shows_down_with_its_identity_and_the_others_carry_on(
    closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = two_gpus()
    probe = probe_for(nvml, closing)
    await probe.sample()
    nvml.xid(0, 79)
    nvml.gpus[0].lost = True  # XID 79: fallen off the bus

    with caplog.at_level(logging.INFO, logger="agent.probes.gpu"):
        first = await probe.sample()
        second = await probe.sample()

    assert_catalog_conformant("gpu", second)
    g0 = gpu_labels(0, UUID0)
    lost = {(m, v) for (m, labels), v in by_series(second).items() if labels == g0}
    assert lost == {
        ("nodemedic_gpu_up", 0),
        ("nodemedic_gpu_xid_errors_total", 1),
        ("nodemedic_gpu_xid_errors_recent", 1),
        ("nodemedic_gpu_xid_last_code", 79),
    }
    assert by_series(first) == by_series(second)
    assert by_series(second)[("nodemedic_gpu_up", gpu_labels(1, UUID1))] == 1
    lost_lines = [r for r in caplog.records if "is lost" in r.getMessage()]
    assert [r.levelno for r in lost_lines] == [logging.WARNING]

    nvml.gpus[0].lost = False  # reset and back
    back = by_series(await probe.sample())
    assert back[("nodemedic_gpu_up", g0)] == 1
    assert ("nodemedic_gpu_temperature_celsius", g0) in back


@pytest.mark.asyncio
async def test_a_gpu_that_cannot_be_opened_is_down_until_it_can(closing: Closing) -> None:
    nvml = two_gpus()
    nvml.gpus[1].failures["nvmlDeviceGetHandleByIndex"] = pynvml.NVML_ERROR_NO_PERMISSION
    probe = probe_for(nvml, closing)

    values = by_series(await probe.sample())
    unopened = gpu_labels(1, "unknown", name="unknown")
    assert values[("nodemedic_gpu_up", unopened)] == 0
    assert [key for key in values if key[1] == unopened] == [("nodemedic_gpu_up", unopened)]

    nvml.gpus[1].failures.clear()
    values = by_series(await probe.sample())
    assert values[("nodemedic_gpu_up", gpu_labels(1, UUID1))] == 1
    assert values[("nodemedic_gpu_xid_errors_total", gpu_labels(1, UUID1))] == 0


@pytest.mark.asyncio
async def test_xid_errors_are_counted_per_gpu_and_age_out_of_the_window(
    closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = two_gpus()
    clock = ManualClock()
    probe = probe_for(nvml, closing, xid_window=600.0, clock=clock)
    await probe.sample()
    g0, g1 = gpu_labels(0, UUID0), gpu_labels(1, UUID1)

    nvml.xid(1, 13)
    nvml.xid(1, 48)
    with caplog.at_level(logging.WARNING, logger="agent.probes.gpu"):
        values = by_series(await probe.sample())
    assert values[("nodemedic_gpu_xid_errors_total", g1)] == 2
    assert values[("nodemedic_gpu_xid_errors_recent", g1)] == 2
    assert values[("nodemedic_gpu_xid_last_code", g1)] == 48
    assert values[("nodemedic_gpu_xid_errors_total", g0)] == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"probe gpu: GPU 1 ({UUID1}): 2 XID error(s), the last XID 48"
    ]

    clock.advance(300)
    nvml.xid(1, 31)
    values = by_series(await probe.sample())
    assert values[("nodemedic_gpu_xid_errors_recent", g1)] == 3

    clock.advance(301)  # the first two are now older than the window
    values = by_series(await probe.sample())
    assert values[("nodemedic_gpu_xid_errors_recent", g1)] == 1
    assert values[("nodemedic_gpu_xid_errors_total", g1)] == 3

    clock.advance(300)
    values = by_series(await probe.sample())
    assert values[("nodemedic_gpu_xid_errors_recent", g1)] == 0
    assert values[("nodemedic_gpu_xid_last_code", g1)] == 31


@pytest.mark.asyncio
async def test_an_xid_storm_is_drained_in_bounded_batches(closing: Closing) -> None:
    nvml = two_gpus()
    probe = probe_for(nvml, closing)
    await probe.sample()
    nvml.xid(0, 31, times=2500)

    totals = []
    for _ in range(4):
        values = by_series(await probe.sample())
        totals.append(values[("nodemedic_gpu_xid_errors_total", gpu_labels(0, UUID0))])

    assert totals == [1000, 2000, 2500, 2500]


@pytest.mark.asyncio
async def test_without_event_sets_there_are_no_xid_series(closing: Closing) -> None:
    nvml = two_gpus()
    nvml.events_supported = False

    samples = await probe_for(nvml, closing).sample()

    assert not [s for s in samples if "xid" in s.metric]
    assert {s.metric for s in samples} >= {"nodemedic_gpu_up", "nodemedic_gpu_temperature_celsius"}


@pytest.mark.asyncio
async def test_close_frees_the_event_set_and_shuts_nvml_down() -> None:
    nvml = two_gpus()
    probe = GpuProbe(nvml=nvml)
    await probe.sample()
    assert (nvml.initialised, nvml.open_event_sets) == (1, 1)

    probe.close()

    assert (nvml.initialised, nvml.open_event_sets) == (0, 0)
