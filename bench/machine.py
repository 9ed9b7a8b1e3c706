"""What benchmark numbers were measured on: they mean nothing without it."""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU model, clock, caches, cores, kernel, load, Python and library versions."""
    info: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    caches = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
        if kind != "Instruction":
            caches[f"L{level}"] = (index / "size").read_text().strip()
    return {"cpu": info.get("model name", "unknown"), "mhz": info.get("cpu MHz"),
            "caches": dict(sorted(caches.items())), "cores": os.cpu_count(), "kernel": platform.release(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            **{name: _version(name) for name in ("numpy", "numba", "dpkt", "scapy")}}
