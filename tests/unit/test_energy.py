"""The energy meter (tunelab.auto.energy): an estimate that says so where no power counter is readable, RAPL
counters (with their wrap-around) where they are, NVML for GPUs, and the spec's energy section in a run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunelab.auto.energy import J_PER_KWH, WORLD_AVERAGE_G_PER_KWH, EnergyMeter, summary, total
from tunelab.spec import parse_spec, template

MINIMAL = {"task": "text-classification", "data": {"train": "bbc-news"}}
FIELDS = {"energy_kwh", "co2_kg", "grid_intensity_g_per_kwh", "grid_intensity_source", "method", "source", "note",
          "duration_s", "cpu_kwh", "ram_kwh"}


def busy(seconds: float) -> int:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


def zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 10**9) -> Path:
    """A fake RAPL zone folder as Linux's powercap shows it."""
    folder = root / name
    folder.mkdir()
    (folder / "name").write_text(label + "\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return folder


def test_estimate_on_a_machine_without_power_counters(tmp_path: Path) -> None:
    started = time.perf_counter()
    meter = EnergyMeter(powercap=tmp_path).start()  # an empty powercap folder: no counter to read
    overhead = time.perf_counter() - started
    busy(0.3)
    started = time.perf_counter()
    record = meter.stop()
    overhead += time.perf_counter() - started
    assert FIELDS <= set(record)
    assert record["energy_kwh"] > 0 and record["cpu_kwh"] > 0 and record["ram_kwh"] > 0
    assert record["co2_kg"] == record["energy_kwh"] * WORLD_AVERAGE_G_PER_KWH / 1000
    assert record["grid_intensity_g_per_kwh"] == WORLD_AVERAGE_G_PER_KWH
    assert "world average" in record["grid_intensity_source"]
    assert record["method"] == "estimate" and record["measured_parts"] == []
    assert record["source"] == "CPU-time estimate (cpu) + memory-size estimate (ram)"
    assert record["note"].startswith("estimate: no power counter readable on this machine; CPU time x 4 W per core")
    assert record["duration_s"] >= 0.3
    assert meter.stop() is record  # stopping twice returns the same record
    assert overhead < 1.0
    assert "estimate: no power counter readable" in summary(record) and "kWh" in summary(record)


def test_the_grid_intensity_scales_co2_exactly(tmp_path: Path) -> None:
    with EnergyMeter(56.0, powercap=tmp_path) as meter:
        busy(0.05)
    record = meter.result
    assert record["grid_intensity_g_per_kwh"] == 56.0
    assert record["grid_intensity_source"] == "spec (energy.grid_intensity)"
    assert record["co2_kg"] == record["energy_kwh"] * 56.0 / 1000


def test_rapl_counters_are_measured_across_a_wrap_around(tmp_path: Path) -> None:
    package = zone(tmp_path, "intel-rapl:0", "package-0", energy_uj=999_000_000)  # 1 J before the counter wraps
    dram = zone(tmp_path, "intel-rapl:0:1", "dram", energy_uj=100)
    zone(tmp_path, "intel-rapl:0:0", "core", energy_uj=5)  # inside the package: not counted twice
    zone(tmp_path, "intel-rapl:1", "psys", energy_uj=5)  # the whole platform: overlaps, left out
    (tmp_path / "intel-rapl:2").mkdir()  # a zone whose counter cannot be read is skipped
    meter = EnergyMeter(100.0, powercap=tmp_path).start()
    (package / "energy_uj").write_text("500000\n")  # wrapped: 1 J to the top + 0.5 J
    meter.sample()
    (package / "energy_uj").write_text("999999000\n")  # 999.499 J more, no wrap
    (dram / "energy_uj").write_text("2000100\n")  # 2 J
    record = meter.stop()
    assert record["method"] == "measured" and record["measured_parts"] == ["cpu", "ram"]
    assert record["source"] == "RAPL (cpu) + RAPL (ram)"
    assert record["note"].startswith("measured: CPU by RAPL")
    assert record["cpu_kwh"] == pytest.approx((1.5 + 999.499) / J_PER_KWH, rel=1e-12)
    assert record["ram_kwh"] == pytest.approx(2 / J_PER_KWH, rel=1e-12)
    assert record["co2_kg"] == record["energy_kwh"] * 100.0 / 1000


def test_a_cpu_counter_without_a_dram_counter_is_partly_measured(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0", energy_uj=0)
    record = EnergyMeter(powercap=tmp_path).start().stop()
    assert record["method"] == "estimate"  # the total holds an estimated part, so it is not a measurement
    assert record["measured_parts"] == ["cpu"]
    assert record["source"] == "RAPL (cpu) + memory-size estimate (ram)"
    assert record["note"].startswith("partly measured: CPU by RAPL")


class FakeNvml:
    """The part of pynvml the meter uses: two GPUs with energy counters in mJ."""

    class NVMLError(Exception):
        pass

    def __init__(self, counter: bool = True) -> None:
        self.mj = {0: 1_000_000, 1: 5_000}
        self.counter, self.shut = counter, False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-AAAA-{handle}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if not self.counter:
            raise self.NVMLError("Not Supported")
        return self.mj[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 250_000  # mW


def test_nvml_measures_the_runs_gpus_only(tmp_path: Path) -> None:
    nvml = FakeNvml()
    meter = EnergyMeter(powercap=tmp_path, gpus=["aaaa-1"], nvml=nvml).start()  # torch's form of the UUID
    nvml.mj = {0: 9_000_000, 1: 3_605_000}  # GPU 0 is another job's
    record = meter.stop()
    assert record["gpu_kwh"] == pytest.approx(3600 / J_PER_KWH)
    assert "NVML (gpu)" in record["source"] and record["measured_parts"] == ["gpu"]
    assert record["method"] == "estimate"  # CPU and RAM are still estimated here
    assert nvml.shut


def test_nvml_power_samples_where_a_gpu_has_no_energy_counter(tmp_path: Path) -> None:
    meter = EnergyMeter(powercap=tmp_path, gpus=["GPU-AAAA-0"], nvml=FakeNvml(counter=False)).start()
    time.sleep(0.2)
    record = meter.stop()
    assert "NVML power samples (gpu)" in record["source"]
    assert record["gpu_kwh"] == pytest.approx(250 * record["duration_s"] / J_PER_KWH, rel=0.1)


def test_a_gpu_nvml_cannot_read_is_left_out_and_said_so(tmp_path: Path) -> None:
    record = EnergyMeter(powercap=tmp_path, gpus=["GPU-BBBB"], nvml=FakeNvml()).start().stop()
    assert record["gpu_kwh"] is None and "not counted (gpu)" in record["source"]
    assert "GPU not counted: NVML could not read it" in record["note"]
    assert record["energy_kwh"] == record["cpu_kwh"] + record["ram_kwh"]


def test_spec_energy_section_and_its_template() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.energy.track is True and spec.energy.grid_intensity is None
    assert parse_spec({**MINIMAL, "energy": {"grid_intensity": 30}}).energy.grid_intensity == 30
    text = template("chat")
    assert "energy:" in text and "grid_intensity: null" in text and "475" in text


def _promoted():
    from tunelab.evaluate.gate import Verdict

    return Verdict(promoted=True, split="validation", metric="macro_f1", lower_is_better=False, baseline=0.5,
                   fine_tuned=0.9, gain=0.4, n=40)


def _accelerator(main: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_main_process=main, num_processes=1, device=SimpleNamespace(type="cpu"))


def test_a_run_records_energy_with_the_specs_grid_intensity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.recipes.common import mark_completed, start_meter
    from tunelab.train.loop import TrainState

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    spec = parse_spec({**MINIMAL, "energy": {"grid_intensity": 20.5}})
    meter = start_meter(spec, _accelerator())
    busy(0.05)
    energy = meter.stop()
    assert energy["grid_intensity_g_per_kwh"] == 20.5 and energy["co2_kg"] == energy["energy_kwh"] * 20.5 / 1000
    mark_completed(tmp_path, TrainState(), time.time(), False, _accelerator(), _promoted(), energy)
    status = json.loads((tmp_path / "run.json").read_text())
    assert status["status"] == "completed" and status["energy"]["method"] in ("measured", "estimate")
    assert FIELDS <= set(status["energy"])


def test_track_false_and_other_processes_write_no_energy_record(tmp_path: Path) -> None:
    from tunelab.recipes.common import mark_completed, start_meter
    from tunelab.train.loop import TrainState

    off = parse_spec({**MINIMAL, "energy": {"track": False}})
    assert start_meter(off, _accelerator()).stop() is None
    assert start_meter(parse_spec(MINIMAL), _accelerator(main=False)).stop() is None
    mark_completed(tmp_path, TrainState(), time.time(), False, _accelerator(), _promoted(), None)
    assert "energy" not in json.loads((tmp_path / "run.json").read_text())


def test_reports_and_card_show_kwh_co2_and_the_method(tmp_path: Path) -> None:
    from tunelab.reports.card import _energy
    from tunelab.reports.html import write_report

    record = EnergyMeter(powercap=tmp_path).start().stop()
    context = {"name": "r", "spec": {"task": "t", "model": {"base": "m", "method": "full"}}, "spec_yaml": "",
               "labels": ["a"], "metric": "macro_f1", "metrics": {"baseline": {}, "fine_tuned": {}},
               "details": {"energy": record}, "history": [], "baseline_method": "none", "warning": None,
               "findings": [], "version": "test"}
    write_report(tmp_path / "report.html", context)
    html = (tmp_path / "report.html").read_text()
    assert 'id="energy"' in html and "kWh" in html and "kg CO2e" in html and "estimate: no power counter" in html
    del context["details"]["energy"]
    write_report(tmp_path / "report.html", context)
    assert 'id="energy"' not in (tmp_path / "report.html").read_text()
    line = _energy({"energy": record}, "- energy and CO2: ")
    assert line.startswith("- energy and CO2: ") and "estimate:" in line
    assert _energy({}, "- ") == ""


def test_total_adds_records_and_says_when_methods_differ() -> None:
    a = {"energy_kwh": 1e-4, "co2_kg": 5e-5, "method": "estimate"}
    b = {"energy_kwh": 3e-4, "co2_kg": 1e-4, "method": "estimate"}
    both = total([a, None, b])  # a trial with energy.track off has no record
    assert both == {"energy_kwh": pytest.approx(4e-4), "co2_kg": pytest.approx(1.5e-4), "method": "estimate",
                    "records": 2}
    assert total([a, {**b, "method": "measured"}])["method"] == "mixed"
    assert total([None, None]) is None
