"""This machine, as figures must state it: CPU, instruction sets, library versions. Torch-free."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return cpu_info().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set(cpu_info().get("flags", "").split())


# Instruction sets that decide INT8 speed on x86 (/proc/cpuinfo flag names).
INT8_CPU_FEATURES = {
    "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "avx_vnni_int8": "AVX-VNNI-INT8",
    "amx_int8": "AMX-INT8", "amx_tile": "AMX tiles",
}


def int8_cpu_features(flags: set[str] | None = None) -> dict:
    """What this CPU has for INT8 dot products: VNNI (one instruction per 4 multiply-adds, no
    int16 saturation) and AMX (tile matrix multiply); without either, AVX2 emulates them."""
    flags = cpu_flags() if flags is None else flags
    present = [name for flag, name in INT8_CPU_FEATURES.items() if flag in flags]
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "avx_vnni_int8"))
    amx = "amx_int8" in flags
    base = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    summary = f"{base}; " + (", ".join(present) if present else "no VNNI, no AMX")
    if present and not amx:
        summary += "; no AMX"
    return {"vnni": vnni, "amx": amx, "flags": present, "summary": summary}


def versions(distributions: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Python's version and each named distribution's ("not installed" where it is not), without importing any."""
    out = {"python": platform.python_version()}
    for name in distributions:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class OtherLoad:
    """CPU time the rest of the machine used while this process timed something, in cores
    (``cores()``: 0.0 on a quiet machine, ~1.0 beside one CPU-bound program); None where the
    kernel does not say (no /proc/stat). A timing made beside other load is off by more than its
    own noise: on a 2-core VM beside one busy loop, a demo table predicted 71 % of its held-out
    paths within ±10 %, against 92-100 % on the quiet machine (benchmarks/latency_split.py --load)."""

    def __init__(self):
        self._start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float] | None:
        import time

        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4)) / ticks  # all but idle, iowait
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def cores(self) -> float | None:
        end = self._now()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, busy, own = (e - s for e, s in zip(end, self._start))
        return round(max(0.0, (busy - own) / wall), 2)


# Other programs' use of the CPU, in cores, above which a timing says the machine was busy.
BUSY_CORES = 0.25


def busy_warning(other_load_cores: float | None) -> str | None:
    """The line a timing made beside other load carries (None when the machine was quiet)."""
    if other_load_cores is None or other_load_cores < BUSY_CORES:
        return None
    return (f"other programs used {other_load_cores:.2f} CPU cores while this was timed: these figures are less "
            f"reliable than on a quiet machine; time again when it is quiet")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _command(args: list[str]) -> str | None:
    """A state-reporting command's output (one line per line, trimmed), or None where it is absent or fails."""
    import shutil
    import subprocess

    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = " | ".join(line.strip() for line in out.stdout.splitlines() if line.strip())
    return text if out.returncode == 0 and text else None


def speed_state(gpu: bool = False) -> dict[str, str]:
    """What this machine's speed depends on that a program can read, beside the runtime's versions and
    threads: the CPU frequency governor and limits, the GPU driver, and on a Jetson the power mode
    (`nvpmodel -q`) and clocks (`jetson_clocks --show`). Only what is readable is listed: a table
    records it, and a later search names what differs."""
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq"
    found = {"cpu_governor": _read(f"{cpufreq}/scaling_governor"),
             "cpu_max_khz": _read(f"{cpufreq}/scaling_max_freq"),
             "cpu_hardware_max_khz": _read(f"{cpufreq}/cpuinfo_max_freq"),
             "nvpmodel": _command(["nvpmodel", "-q"]),
             "jetson_clocks": _command(["jetson_clocks", "--show"])}
    if gpu:
        found["gpu_driver"] = _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {k: v for k, v in found.items() if v is not None}


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name, from nvidia-smi (no CUDA library needed), or on a Jetson (whose
    GPU is part of the module) the module's name from the device tree; None when there is neither."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        names = [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        names = []
    if names:
        return names[0]
    try:
        model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None
    return model if "NVIDIA" in model else None
