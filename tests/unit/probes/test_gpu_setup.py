"""GpuProbe's start: no driver disables it quietly, a broken driver fails it; its config,
its default rules, and how faithful ``FakeNvml`` is to the real ``pynvml``.

``FakeNvml`` stands in for NVML because this machine has no NVIDIA GPU or driver; the
real ``pynvml`` module is used wherever it can be: for the no-driver path (its own
``nvmlInit`` fails here), and as the reference the fake and the probe's constants are
checked against.
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import pynvml
import pytest

from agent.config import ProbesConfig, load_settings
from agent.errors import ConfigError, ProbeError
from agent.model import Sample
from agent.probes import build_probes, nvml
from agent.probes.catalog import metrics_of
from agent.probes.gpu import GpuProbe
from agent.rules import ConditionTracker

from .fake_nvml import FakeGpu, FakeNvml, nvidia_host
from .fakes import Closing, write_tree

UUID0 = "GPU-5a3b1f6c-1111-2222-3333-444455556666"


def pci_bus(root: Path, *devices: tuple[str, str]) -> Path:
    """A sysfs tree whose PCI bus holds ``(vendor, class)`` devices; returns its root."""
    for number, (vendor, pci_class) in enumerate(devices):
        write_tree(
            root / "bus" / "pci" / "devices" / f"0000:{number:02x}:00.0",
            {"vendor": f"{vendor}\n", "class": f"{pci_class}\n"},
        )
    return root


VIRTIO_NET = ("0x1af4", "0x020000")
NVIDIA_H100 = ("0x10de", "0x030200")
NVIDIA_NVSWITCH = ("0x10de", "0x068000")


def _gpu_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "agent.probes.gpu"]


@pytest.mark.skipif(nvidia_host(), reason="this host has an NVIDIA GPU or driver")
@pytest.mark.asyncio
async def test_real_pynvml_without_a_driver_disables_the_probe_with_one_info_line(
    closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    probe = closing(GpuProbe())  # no GPU on the bus, no library: the real start path

    with caplog.at_level(logging.DEBUG, logger="agent.probes.gpu"):
        readings = [await probe.sample() for _ in range(3)]

    assert readings == [[], [], []]
    reason = "no NVIDIA GPU or driver on this host (NVML: NVML Shared Library Not Found)"
    assert probe.disabled_reason == reason
    assert _gpu_log(caplog) == [(logging.INFO, f"probe gpu: disabled: {reason}")]


@pytest.mark.skipif(nvidia_host(), reason="this host has an NVIDIA GPU or driver")
@pytest.mark.asyncio
async def test_real_pynvml_with_a_gpu_on_the_bus_but_no_library_fails_the_probe(
    tmp_path: Path, closing: Closing
) -> None:
    # The bus says a GPU is there, so the probe does import pynvml, whose nvmlInit fails.
    probe = closing(GpuProbe(sys=pci_bus(tmp_path, NVIDIA_H100)))

    with pytest.raises(ProbeError, match=r"NVIDIA GPU\(s\) on the PCI bus but no driver"):
        await probe.sample()
    assert probe.disabled_reason is None


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
    ],
)
@pytest.mark.asyncio
async def test_no_gpu_and_no_driver_disables_the_probe_once_and_for_good(
    code: int, shown: str, tmp_path: Path, closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml([], init_error=code)
    sys_tree = pci_bus(tmp_path, VIRTIO_NET, NVIDIA_NVSWITCH)  # a switch is no GPU
    probe = closing(GpuProbe(nvml=fake, sys=sys_tree))

    with caplog.at_level(logging.DEBUG, logger="agent.probes.gpu"):
        readings = [await probe.sample() for _ in range(3)]

    assert readings == [[], [], []]
    assert fake.init_calls == 1
    assert _gpu_log(caplog) == [
        (logging.INFO, f"probe gpu: disabled: no NVIDIA GPU or driver on this host (NVML: {shown})")
    ]
    assert probe.runs_inline, "a disabled probe reads nothing: no thread hand-off per run"


@pytest.mark.asyncio
async def test_without_the_gpu_extra_the_probe_disables_itself(
    tmp_path: Path,
    closing: Closing,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    probe = closing(GpuProbe(sys=pci_bus(tmp_path, NVIDIA_H100, NVIDIA_H100)))

    with caplog.at_level(logging.INFO, logger="agent.probes.gpu"):
        assert await probe.sample() == []
        assert await probe.sample() == []

    assert _gpu_log(caplog) == [
        (
            logging.INFO,
            "probe gpu: disabled: the nvidia-ml-py package is not installed "
            "(pip install 'nodemedic[gpu]'), though 2 NVIDIA GPU(s) are on the PCI bus",
        )
    ]


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
    ],
)
@pytest.mark.asyncio
async def test_a_gpu_on_the_pci_bus_without_a_driver_fails_the_probe(
    code: int, shown: str, tmp_path: Path, closing: Closing
) -> None:
    # The classic: a kernel upgrade, and the nvidia module did not build for it.
    fake = FakeNvml([FakeGpu(uuid=UUID0)], init_error=code)
    probe = closing(GpuProbe(nvml=fake, sys=pci_bus(tmp_path, VIRTIO_NET, NVIDIA_H100)))

    for _ in range(2):
        with pytest.raises(ProbeError) as caught:
            await probe.sample()
        assert str(caught.value) == (
            f"probe gpu: 1 NVIDIA GPU(s) on the PCI bus but no driver answers (NVML: {shown}); "
            "is the nvidia kernel module loaded, and /dev/nvidia* visible to the agent "
            "(systemd's PrivateDevices=yes hides it)?"
        )
    assert probe.disabled_reason is None
    assert fake.init_calls == 2


@pytest.mark.asyncio
async def test_a_driver_that_does_not_start_fails_the_probe_until_it_does(
    closing: Closing,
) -> None:
    fake = FakeNvml([FakeGpu(uuid=UUID0)], init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    probe = closing(GpuProbe(nvml=fake))

    for _ in range(2):
        with pytest.raises(ProbeError, match=r"^probe gpu: NVML did not start: RM has detected"):
            await probe.sample()
    assert probe.disabled_reason is None

    fake.init_error = None  # the node was rebooted into the new driver
    samples = await probe.sample()
    assert Sample.of("nodemedic_gpu_devices", 1) in samples
    assert fake.init_calls == 3


@pytest.mark.asyncio
async def test_a_failed_gpu_count_is_a_probe_error_and_releases_nvml(closing: Closing) -> None:
    class CountFails(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - pynvml's name
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    fake = CountFails([FakeGpu(uuid=UUID0)])
    probe = closing(GpuProbe(nvml=fake))

    with pytest.raises(ProbeError, match=r"^probe gpu: NVML cannot count the GPUs: Unknown Error"):
        await probe.sample()
    assert fake.initialised == 0


@pytest.mark.asyncio
async def test_a_host_with_a_driver_and_no_gpus_reports_zero_devices(closing: Closing) -> None:
    probe = closing(GpuProbe(nvml=FakeNvml([])))

    assert await probe.sample() == [Sample.of("nodemedic_gpu_devices", 0)]


# -- FakeNvml and the probe's constants against the real pynvml --------------------------


def test_the_probes_nvml_constants_are_pynvmls() -> None:
    names = {
        "NVML_ERROR_NOT_SUPPORTED": "NVML_ERROR_NOT_SUPPORTED",
        "NVML_ERROR_DRIVER_NOT_LOADED": "NVML_ERROR_DRIVER_NOT_LOADED",
        "NVML_ERROR_TIMEOUT": "NVML_ERROR_TIMEOUT",
        "NVML_ERROR_LIBRARY_NOT_FOUND": "NVML_ERROR_LIBRARY_NOT_FOUND",
        "NVML_ERROR_FUNCTION_NOT_FOUND": "NVML_ERROR_FUNCTION_NOT_FOUND",
        "NVML_ERROR_GPU_IS_LOST": "NVML_ERROR_GPU_IS_LOST",
        "NVML_TEMPERATURE_GPU": "NVML_TEMPERATURE_GPU",
        "NVML_VOLATILE_ECC": "NVML_VOLATILE_ECC",
        "NVML_MEMORY_ERROR_TYPE_CORRECTED": "NVML_MEMORY_ERROR_TYPE_CORRECTED",
        "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": "NVML_MEMORY_ERROR_TYPE_UNCORRECTED",
        "NVML_EVENT_TYPE_XID_CRITICAL_ERROR": "nvmlEventTypeXidCriticalError",
    }
    for ours, theirs in names.items():
        assert getattr(nvml, ours) == getattr(pynvml, theirs), ours
    known = {
        "gpu_idle": "GpuIdle",
        "applications_clocks_setting": "ApplicationsClocksSetting",
        "sw_power_cap": "SwPowerCap",
        "hw_slowdown": "HwSlowdown",
        "sync_boost": "SyncBoost",
        "sw_thermal_slowdown": "SwThermalSlowdown",
        "hw_thermal_slowdown": "HwThermalSlowdown",
        "hw_power_brake_slowdown": "HwPowerBrakeSlowdown",
        "display_clock_setting": "DisplayClockSetting",
        "board_limit": "BoardLimit",
        "reliability": "Reliability",
    }
    for bit, reason in nvml.CLOCK_EVENT_REASONS:
        assert getattr(pynvml, f"nvmlClocksThrottleReason{known[reason]}") == bit, reason


def test_fake_nvml_has_pynvmls_signatures() -> None:
    functions = [name for name in vars(FakeNvml) if name.startswith("nvml")]
    assert len(functions) == 17
    for name in functions:
        real = inspect.signature(getattr(pynvml, name))
        fake = inspect.signature(getattr(FakeNvml([]), name))
        assert [(p.name, p.default) for p in fake.parameters.values()] == [
            (p.name, p.default) for p in real.parameters.values()
        ], name
    assert FakeNvml.NVMLError is pynvml.NVMLError


def test_fake_nvml_refuses_calls_before_init_as_nvml_does() -> None:
    fake = FakeNvml([FakeGpu(uuid=UUID0)])

    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(handle, pynvml.c_nvmlDevice_t)
    assert isinstance(fake.nvmlDeviceGetMemoryInfo(handle), pynvml.c_nvmlMemory_t)
    with pytest.raises(pynvml.NVMLError_Timeout):
        fake.nvmlEventSetWait(fake.nvmlEventSetCreate(), 0)


# -- configuration and default rules ----------------------------------------------------


def test_the_gpu_probe_is_built_by_default_with_its_xid_window(closing: Closing) -> None:
    config = ProbesConfig.model_validate({"gpu": {"interval": "15s", "xid_window": "30m"}})

    probes = {probe.name: closing(probe) for probe in build_probes(config)}

    gpu = probes["gpu"]
    assert isinstance(gpu, GpuProbe)
    assert (gpu.interval, gpu.timeout, gpu._xid_window) == (15.0, 10.0, 1800.0)


def test_a_bad_xid_window_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nodemedic.yaml"
    path.write_text("probes:\n  gpu: {xid_window: 0s}\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})

    assert [(i.path, i.message) for i in caught.value.issues] == [
        ("probes.gpu.xid_window", "xid_window must be at least 1s (got '0s')")
    ]


def test_disabling_the_gpu_probe_needs_no_rules_list(tmp_path: Path) -> None:
    path = tmp_path / "nodemedic.yaml"
    path.write_text("probes:\n  gpu: {enabled: false}\n", encoding="utf-8")

    settings = load_settings(path, environ={})

    assert "gpu" not in settings.probes.enabled()
    assert "gpu-too-hot" not in {rule.name for rule in settings.rules}  # dropped with its probe
    path.write_text(
        "probes:\n  gpu: {enabled: false}\nrules:\n"
        "  - {name: hot, metric: nodemedic_gpu_temperature_celsius, op: '>', threshold: 80}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="disabled probe 'gpu'"):
        load_settings(path, environ={})


@pytest.mark.asyncio
async def test_default_rules_fire_on_heat_ecc_xid_and_a_lost_gpu(
    tmp_path: Path, closing: Closing
) -> None:
    settings = load_settings(None, environ={})
    tracker = ConditionTracker(settings.rules, flap_window=600, flap_limit=3)
    covered = {spec.name for spec in metrics_of("gpu")}
    fake = FakeNvml([FakeGpu(uuid=UUID0), FakeGpu(uuid="GPU-b", temperature=90, ecc_uncorrected=2)])
    probe = closing(GpuProbe(nvml=fake))
    assert tracker.observe(covered, await probe.sample(), 1000.0) != []

    fake.xid(0, 79)
    fake.gpus[0].lost = True
    tracker.observe(covered, await probe.sample(), 1000.0 + 301)

    states = {(c.rule, c.labels[0][1]): c.state.value for c in tracker.conditions()}
    assert states[("gpu-too-hot", "1")] == "firing"
    assert states[("gpu-uncorrected-ecc-errors", "1")] == "firing"
    assert states[("gpu-xid-errors", "0")] == "firing"
    assert states[("gpu-lost", "0")] == "firing"
    assert states[("gpu-lost", "1")] == "ok"
    assert states[("gpu-xid-errors", "1")] == "ok"
