"""Measuring one run: wall-clock and CPU time, resident memory and its peak, and a profile
summary of where the time goes."""

import cProfile
import ctypes
import gc
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import torch


def _proc_status_mib(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    """Resident set size of this process now (Linux /proc)."""
    rss = _proc_status_mib("VmRSS")
    return rss if rss is not None else peak_rss_mib()


def peak_rss_mib() -> float:
    """High-water mark of the resident set since the last :func:`reset_peak_rss`."""
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release_memory() -> float:
    """Free what earlier runs of this process left behind, restart the peak-RSS count (Linux:
    ``clear_refs`` 5 resets VmHWM) and return the RSS now: the start of a run's memory growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand glibc's freed heap back to the OS
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return current_rss_mib()


class Clock:
    """Wall-clock and CPU seconds (all threads of the process) of a span of work. On a shared
    machine the CPU time is the work itself; the wall time also holds the waits for a core."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        _synchronize()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _synchronize()
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profile_summary(profiler: "cProfile.Profile", top: int = 18) -> dict:
    """The functions that take the most time: by own time (where the CPU goes, mostly torch's
    C++ ops) and, for the plugin's own functions, by cumulative time (what each part costs)."""
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, function), (_calls, calls, own, cumulative, _callers) in stats.stats.items():
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if path != "~" else "built-in"
        rows.append({"function": f"{where} {function}", "calls": calls, "own_seconds": own,
                     "cumulative_seconds": cumulative,
                     "plugin": "m3p_fairseq" in path and "benchmark" not in Path(path).parts})
    return {"total_seconds": stats.total_tt,
            "by_own_time": sorted(rows, key=lambda r: -r["own_seconds"])[:top],
            "plugin_by_cumulative_time": sorted((r for r in rows if r["plugin"]),
                                                key=lambda r: -r["cumulative_seconds"])[:top]}
