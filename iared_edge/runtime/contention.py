"""How many CPU cores other processes keep busy: a direct signal of a competing load.

The budget controller runs a CPU model with fewer threads while another process competes for the
cores. Knowing when that process has gone from the latencies alone means trying the faster mode
again, and a trial under a load that is still there misses the deadline by a wide margin (two
threads sharing two busy cores run several times slower: docs/benchmarks.md, 'Runs 18 to 22').
Linux counts every core's busy time in /proc/stat and this process's own CPU time is known
exactly, so the difference is what everything else used, measured without risking a frame.

    monitor = CpuContention()
    monitor.sample()          # once per frame; None where /proc/stat does not exist
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable, Optional, Tuple

PROC_STAT = "/proc/stat"


def read_busy_seconds(path: str = PROC_STAT) -> Optional[float]:
    """Busy CPU time summed over all cores since boot, in seconds (user, nice, system, irq,
    softirq and steal: time a core was not free for us), or None where the file is missing or
    not in the Linux format."""
    try:
        with open(path) as f:
            line = f.readline()
    except OSError:
        return None
    fields = line.split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    try:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except ValueError:
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuContention:
    """Cores kept busy by other processes, averaged over the last `window_s` seconds (at least):
    /proc/stat counts in clock ticks (10 ms), too coarse for one frame."""

    def __init__(
        self,
        window_s: float = 0.3,
        path: str = PROC_STAT,
        clock: Callable[[], float] = time.perf_counter,
        own_cpu: Callable[[], float] = time.process_time,
    ):
        self.window_s, self.path, self._clock, self._own = float(window_s), path, clock, own_cpu
        self.available = read_busy_seconds(path) is not None
        self._samples: deque = deque(maxlen=1000)  # (wall, busy, own) seconds
        self.window_start = -float("inf")  # when the window of the last reading began (clock time)

    def sample(self) -> Optional[float]:
        """Record now; return the other processes' busy cores over the window, or None when
        unknown (no /proc/stat, or not yet a window's worth of samples)."""
        if not self.available:
            return None
        busy = read_busy_seconds(self.path)
        if busy is None:
            self.available = False
            return None
        now: Tuple[float, float, float] = (self._clock(), busy, self._own())
        self._samples.append(now)
        # the newest sample at least `window_s` old
        old = next((s for s in reversed(self._samples) if now[0] - s[0] >= self.window_s), None)
        while self._samples and old is not None and self._samples[0] is not old:
            self._samples.popleft()
        if old is None:
            return None
        self.window_start = old[0]
        wall = now[0] - old[0]
        return max(0.0, ((now[1] - old[1]) - (now[2] - old[2])) / wall)
