"""Process memory figures for the benchmarks (Linux ``/proc/self/status``)."""

from __future__ import annotations


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` field in bytes: ``VmRSS`` (now) or ``VmHWM`` (peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")
