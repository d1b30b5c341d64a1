"""Energy and CO2 of a run: measured where the machine has a power counter, estimated where it has none,
and the record always says which.

Sources, per part of the machine:
- CPU and RAM: RAPL, Linux's powercap counters (/sys/class/powercap/intel-rapl:*/energy_uj; AMD CPUs appear
  there too). They count whole sockets, so other work on the machine is included. Root-only readable on
  kernels patched for CVE-2020-8694; a counter that cannot be read is treated as absent.
- GPU (CUDA runs): NVML (nvidia-ml-py): each used GPU's total-energy counter (Volta and later), or its power
  draw sampled every second on older GPUs.
- Without a counter, an estimate: the process's CPU time x CPU_WATTS_PER_CORE, and RAM_WATTS_PER_GB x the
  process's peak memory x the run's duration. A GPU that NVML cannot read is left out, and said so.
CO2 = kWh x grid intensity (gCO2e/kWh) / 1000; the default intensity is WORLD_AVERAGE_G_PER_KWH.

Why not codecarbon (OfflineEmissionsTracker, tried at 3.3.2 with save_to_file=False, log_level="error"):
it worked offline and wrote no file, but its hardware detection took 1.5-1.8 s at every start on a 2-core
machine (the budget was well under 2 s a run, all included); it printed INFO and WARNING lines at start even
with its logger set to ERROR; it tells how it measured only through private attributes (the CPU's `_mode`
"cpu_load", `_is_generic_tdp`); and it brings 12 packages (Authlib, cryptography, questionary, RapidFuzz,
pycountry, ...). Its documented figures are used here: the 475 g/kWh world average, 4 W per CPU thread for
an unknown CPU, 3 W per 8 GB of RAM.

Importing this module is light (standard library only); pynvml and psutil are imported when needed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# IEA, Global Energy & CO2 Status Report 2019: the world's average carbon intensity of electricity
# generation (2018); codecarbon's `world_average` (codecarbon/data/private_infra/carbon_intensity_per_source.json).
WORLD_AVERAGE_G_PER_KWH = 475.0
WORLD_AVERAGE_SOURCE = ("world average (IEA Global Energy & CO2 Status Report 2019); set energy.grid_intensity "
                        "for your grid")
CPU_WATTS_PER_CORE = 4.0  # per busy core: codecarbon's figure for a CPU missing from its TDP table
RAM_WATTS_PER_GB = 3.0 / 8  # 3 W per 8 GB of DDR3/DDR4 (Crucial's figure, codecarbon's heuristic before v3)
POWERCAP = Path("/sys/class/powercap")
RAPL_SAMPLE_SECONDS = 10.0  # well inside the fastest wrap of a RAPL counter (~262 kJ: minutes at full load)
POWER_SAMPLE_SECONDS = 1.0  # for GPUs without an energy counter, whose power draw is integrated instead
J_PER_KWH = 3.6e6


class _Rapl:
    """One RAPL zone (a CPU package or its DRAM): energy since start, across counter wrap-arounds."""

    source = "RAPL"

    def __init__(self, zone: Path, part: str) -> None:
        self.zone, self.part = zone, part
        self.max_uj = int((zone / "max_energy_range_uj").read_text())
        self.last_uj = self._read()
        self.total_uj = 0

    def _read(self) -> int:
        return int((self.zone / "energy_uj").read_text())

    def sample(self) -> None:
        now = self._read()
        delta = now - self.last_uj
        if delta < 0:  # the counter passed max_energy_range_uj and started again from 0
            delta += self.max_uj
        self.total_uj += delta
        self.last_uj = now

    def joules(self) -> float:
        return self.total_uj / 1e6


def rapl_zones(root: Path = POWERCAP) -> list[_Rapl]:
    """The readable RAPL zones under ROOT: CPU packages ('package-N' -> cpu) and DRAM ('dram' -> ram). Core,
    uncore and psys zones are left out: they overlap the package (psys: the whole platform)."""
    zones = []
    for zone in sorted(root.glob("intel-rapl:*")):  # the powercap folder lists sub-zones at the top too
        try:
            name = (zone / "name").read_text().strip()
            part = "cpu" if name.startswith("package") else "ram" if name == "dram" else None
            if part:
                zones.append(_Rapl(zone, part))
        except (OSError, ValueError):  # unreadable (root-only) or not a counter
            continue
    return zones


def _uuid(text: Any) -> str:
    """A GPU UUID as torch and NVML both can give it: lowercase hex, without NVML's 'GPU-' prefix."""
    text = text.decode() if isinstance(text, bytes) else str(text)
    return text.lower().removeprefix("gpu-")


class _Nvml:
    """The run's GPUs through NVML: the total-energy counter (mJ) where the GPU has one, else power (mW)
    sampled and integrated."""

    part = "gpu"

    def __init__(self, uuids: Sequence[str], nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        wanted = {_uuid(u) for u in uuids}
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self.handles = [h for h in handles if _uuid(nvml.nvmlDeviceGetUUID(h)) in wanted]
        if len(self.handles) != len(wanted):
            nvml.nvmlShutdown()
            raise RuntimeError(f"NVML lists {len(self.handles)} of the run's {len(wanted)} GPU(s)")
        try:
            self.start_mj = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
            self.counter = True
        except nvml.NVMLError:  # before Volta: no energy counter
            self.counter = False
            self.integrated_j, self.last = 0.0, (time.monotonic(), self._watts())
        self.source = "NVML" if self.counter else "NVML power samples"
        self.sample_seconds = RAPL_SAMPLE_SECONDS if self.counter else POWER_SAMPLE_SECONDS

    def _watts(self) -> float:
        return sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000

    def sample(self) -> None:
        if not self.counter:
            now, watts = time.monotonic(), self._watts()
            self.integrated_j += (now - self.last[0]) * (watts + self.last[1]) / 2
            self.last = (now, watts)

    def joules(self) -> float:
        if self.counter:
            return sum(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) - s
                       for h, s in zip(self.handles, self.start_mj)) / 1000
        return self.integrated_j

    def close(self) -> None:
        self.nvml.nvmlShutdown()


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (data-loader workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _peak_memory_gb() -> float:
    """Peak resident memory of this process, in GB."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return peak / (2**30 if os.uname().sysname == "Darwin" else 2**20)
    except ImportError:  # Windows (psutil comes with accelerate)
        import psutil

        return psutil.Process().memory_info().rss / 2**30


@dataclass
class Part:
    """The energy of one part of the machine (cpu, gpu, ram) and how it was obtained."""

    kwh: float | None  # None: not counted (a GPU that NVML cannot read)
    measured: bool
    source: str  # RAPL, NVML, CPU-time estimate, ...
    how: str  # a phrase for the record's note


class EnergyMeter:
    """Energy and CO2 between start() and stop(). Use it as a context manager, or start()/stop().

    GRID_INTENSITY: gCO2e per kWh (None: the world average). GPUS: UUIDs of the GPUs the run uses (NVML
    measures them). PROCESSES: how many processes run the same work; only this one is measured, so a CPU-time
    estimate is scaled by it (counters see the whole machine anyway). LOCAL_PROCESSES: how many of them run on
    this machine. POWERCAP and NVML (the pynvml module) are injectable for tests. ENABLED=False: a meter that
    measures nothing and records None (energy.track: false, or a process other than the main one)."""

    def __init__(self, grid_intensity: float | None = None, *, enabled: bool = True, gpus: Sequence[str] = (),
                 processes: int = 1, local_processes: int | None = None, powercap: Path = POWERCAP,
                 nvml: Any = None, cpu_watts_per_core: float = CPU_WATTS_PER_CORE) -> None:
        self.enabled = enabled
        self.grid = grid_intensity if grid_intensity is not None else WORLD_AVERAGE_G_PER_KWH
        self.grid_source = "spec (energy.grid_intensity)" if grid_intensity is not None else WORLD_AVERAGE_SOURCE
        self.gpus, self.processes = list(gpus), processes
        self.local_processes = local_processes if local_processes is not None else processes
        self.powercap, self.nvml, self.cpu_watts = powercap, nvml, cpu_watts_per_core
        self.rapl: list[_Rapl] = []
        self.gpu: _Nvml | None = None
        self.gpu_error = ""
        self.result: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._started: float | None = None

    def start(self) -> "EnergyMeter":
        if not self.enabled or self._started is not None:
            return self
        self.rapl = rapl_zones(self.powercap)
        if self.gpus:
            try:
                if self.nvml is None:
                    import pynvml as nvml  # nvidia-ml-py
                    self.nvml = nvml
                self.gpu = _Nvml(self.gpus, self.nvml)
            except Exception as err:  # no driver, no library, a GPU NVML does not list: say so in the record
                self.gpu_error = f"{type(err).__name__}: {err}"
        self._cpu0, self._started = _cpu_seconds(), time.monotonic()
        intervals = ([RAPL_SAMPLE_SECONDS] if self.rapl else []) + ([self.gpu.sample_seconds] if self.gpu else [])
        if intervals:  # counters to follow: a daemon thread samples them until stop()
            seconds = min(intervals)
            threading.Thread(target=_sample_loop, args=(weakref.ref(self), self._halt, seconds), daemon=True,
                             name="tunelab-energy").start()
        return self

    def sample(self) -> None:
        """Read the counters now (a sampler thread does it every few seconds, so RAPL wrap-arounds are seen)."""
        with self._lock:
            for counter in [*self.rapl, *([self.gpu] if self.gpu else [])]:
                try:
                    counter.sample()
                except Exception:  # a counter that fails once must not end a run: it keeps its total so far
                    continue

    def stop(self) -> dict[str, Any] | None:
        """Stop measuring and return the record (None when disabled); later calls return the same record."""
        if not self.enabled or self._started is None or self.result is not None:
            return self.result
        self._halt.set()
        self.sample()
        duration = time.monotonic() - self._started
        cpu_seconds = (_cpu_seconds() - self._cpu0) * self.processes
        parts = {"cpu": self._cpu_part(cpu_seconds), "ram": self._ram_part(duration)}
        if self.gpus:
            parts["gpu"] = self._gpu_part()
        if self.gpu:
            with contextlib.suppress(Exception):
                self.gpu.close()
        self.result = self._record(parts, duration)
        return self.result

    def _measured(self, part: str) -> float | None:
        zones = [z for z in self.rapl if z.part == part]
        return sum(z.joules() for z in zones) / J_PER_KWH if zones else None

    def _cpu_part(self, cpu_seconds: float) -> Part:
        kwh = self._measured("cpu")
        if kwh is not None:
            return Part(kwh, True, "RAPL", "CPU by RAPL package counters (whole sockets, other work on this machine "
                        "included)")
        return Part(cpu_seconds * self.cpu_watts / J_PER_KWH, False, "CPU-time estimate",
                    f"no power counter readable on this machine; CPU time x {self.cpu_watts:g} W per core")

    def _ram_part(self, duration: float) -> Part:
        kwh = self._measured("ram")
        if kwh is not None:
            return Part(kwh, True, "RAPL", "RAM by RAPL DRAM counters")
        gb = _peak_memory_gb() * self.processes
        return Part(gb * RAM_WATTS_PER_GB * duration / J_PER_KWH, False, "memory-size estimate",
                    f"RAM {gb:.2f} GB peak x {RAM_WATTS_PER_GB:g} W per GB")

    def _gpu_part(self) -> Part:
        if self.gpu is not None:
            try:
                return Part(self.gpu.joules() / J_PER_KWH, True, self.gpu.source,
                            f"GPU by {self.gpu.source} ({len(self.gpu.handles)} GPU(s))")
            except Exception as err:
                self.gpu_error = f"{type(err).__name__}: {err}"
        return Part(None, False, "not counted", f"GPU not counted: NVML could not read it ({self.gpu_error})")

    def _record(self, parts: dict[str, Part], duration: float) -> dict[str, Any]:
        kwh = sum(p.kwh for p in parts.values() if p.kwh is not None)
        measured = [name for name, p in parts.items() if p.measured]
        method = "measured" if len(measured) == len(parts) else "estimate"
        lead = "measured" if method == "measured" else "partly measured" if measured else "estimate"
        how = "; ".join(p.how for p in parts.values())
        if self.processes > 1 and not (parts["cpu"].measured and parts["ram"].measured):
            how += f"; estimated parts: the main process x {self.processes} processes"
        if self.processes > 1 and measured and self.local_processes < self.processes:
            how += f"; counters of this machine only ({self.local_processes} of {self.processes} processes)"
        return {"energy_kwh": kwh, "co2_kg": kwh * self.grid / 1000, "grid_intensity_g_per_kwh": self.grid,
                "grid_intensity_source": self.grid_source, "method": method,
                "source": " + ".join(f"{p.source} ({name})" for name, p in parts.items()),
                "note": f"{lead}: {how}", "duration_s": round(duration, 3),
                **{f"{name}_kwh": p.kwh for name, p in parts.items()}, "measured_parts": measured,
                "processes": self.processes}

    def __enter__(self) -> "EnergyMeter":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _sample_loop(meter_ref: "weakref.ref[EnergyMeter]", halt: threading.Event, seconds: float) -> None:
    """Read the counters every SECONDS until the meter stops, or is dropped (a run that failed midway)."""
    while not halt.wait(seconds):
        meter = meter_ref()
        if meter is None:
            return
        meter.sample()
        del meter


def total(records: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several runs' energy records as one (a ladder rung's trials, a study's trials): kWh and CO2 add up, and
    the method is theirs when they all agree, else "mixed". None when no run recorded any (energy.track off)."""
    found = [r for r in records if r]
    if not found:
        return None
    methods = {r.get("method") for r in found}
    return {"energy_kwh": sum(r.get("energy_kwh") or 0 for r in found),
            "co2_kg": sum(r.get("co2_kg") or 0 for r in found),
            "method": methods.pop() if len(methods) == 1 else "mixed", "records": len(found)}


def summary(record: dict[str, Any] | None) -> str:
    """One line for reports and model cards: kWh, CO2, and how they were obtained."""
    if not record:
        return "not recorded (energy.track: false)"

    def amount(value: float, unit: str, small: str) -> str:
        return f"{value:.3g} {unit}" + (f" ({value * 1000:.3g} {small})" if value < 0.01 else "")

    return (f"{amount(record['energy_kwh'], 'kWh', 'Wh')}, {amount(record['co2_kg'], 'kg CO2e', 'g')} at "
            f"{record['grid_intensity_g_per_kwh']:g} gCO2e/kWh, over {record['duration_s']:.0f} s; {record['note']}")
