"""CPU time and memory of a process, straight from /proc (Linux only, no psutil)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """One reading: CPU seconds used so far (user + system) and memory in bytes."""

    cpu_s: float
    rss: int
    hwm: int  # peak RSS so far (VmHWM)


def sample(pid: int) -> ProcSample:
    """Read /proc/<pid>/stat and /proc/<pid>/status (raises OSError once the process is gone)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(value.split()[0]) * 1024
    return ProcSample(cpu, mem.get("VmRSS", 0), mem.get("VmHWM", 0))


def sample_many(pids: list[int]) -> ProcSample:
    """The sum of ``sample`` over processes (peak RSS: the sum of each one's peak)."""
    samples = [sample(pid) for pid in pids]
    return ProcSample(sum(s.cpu_s for s in samples), sum(s.rss for s in samples), sum(s.hwm for s in samples))


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import platform

    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gb": round(mem_total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": list(os.getloadavg()),
    }
