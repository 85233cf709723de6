"""Latency-budget control: pick, per frame, the most tokens whose predicted latency fits.

Latency is close to linear in the work done, so the model is
    predicted(level) = scale * (a + b * cost(level)) + overhead
with cost the FLOPs of that keep level relative to keeping everything, (a, b) fitted by a start-up
calibration on the real device, `scale` tracking load changes from every measured frame (an
exponential average of measured / predicted that follows a slow-down at once and a speed-up
gradually), and `overhead` the pre/post-processing time. The safety margin widens to the recent
jitter (the `quantile` of the relative prediction error over the last `window` frames seen in the
same mode and, where known, the same load condition: the jitter under a load does not shrink the
keep once the load has gone; under a load, the largest of them and at least `load_margin`, since
a competing process's stalls are rare, large spikes; before the first frame, the widest margin,
as pre/post-processing time is not known yet; in the stream's first 10 frames, the largest error
so far and at least `new_margin`). Accuracy first: the highest level that fits wins; the level
drops at once when it would miss, and rises one step at a time only after several frames with
room to spare (hysteresis).

Modes are other ways to run the same levels (on a CPU: fewer threads, which stall less when another
process competes for the cores), ordered from most to least slowed by such a process. Each mode
has its own load estimate; the controller switches mode when another lets it keep more tokens.
An estimate not refreshed by frames relaxes toward its calibrated value, so a mode that was slow
under a load that has gone is tried again; the trial runs at a level that would fit even at the
mode's last measured speed. Where the caller can see the load directly (`observe(..., quiet=)`:
on Linux, other processes' CPU time), estimates relax only while the device is quiet: no trial
under a load that is still there, nor a switch under it to an earlier mode that ran none of it,
nor to a mode whose only frames of it came before the load bit fully (such a trial misses by
far: two threads sharing busy cores run several times slower), and once it has gone (the reading
turns quiet), a return at once to the speed the mode had before the load, the first frame at a
level that would fit even 1.5x slower (`after_load`: cores can stay slow for a while after a load),
then up as the measured speed allows.
A mode left after a slow frame while the reading stayed quiet (jitter, not a load) relaxes back
with time, as when the load is unknown.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass
class BudgetController:
    levels: Sequence[float]  # keep levels, highest first (e.g. 1.0 ... 0.3)
    costs: Sequence[float]  # relative cost of each level (FLOPs / full FLOPs)
    budget_ms: float
    margin: float = 0.1  # plan for budget / (1 + margin) at least
    max_margin: float = 0.6  # ... and at most, however jittery the recent frames
    new_margin: float = 0.25  # ... and at least this in the stream's first 10 frames
    # (the machine can stray far from its calibration within
    # them: docs/benchmarks.md, 'Runs 9 and 10')
    quantile: float = 0.99  # the share of frames the margin is sized to cover
    window: int = 100  # recent frames per condition the margin is sized from
    load_quantile: float = 1.0  # ... while another process competes (`quiet=False`): its
    # scheduler stalls come in rare, isolated spikes, which a 99th
    # percentile of 100 frames never sees (docs/benchmarks.md,
    # 'Three fixes from per-frame traces')
    load_margin: float = 0.4  # ... and under a load at least this: its spikes come rarer
    # than once in 100 frames too (docs/benchmarks.md,
    # 'Runs 14 to 16')
    alpha: float = 0.3  # weight of the newest frame when the load eases
    alpha_up: float = 0.8  # ... and when it grows (react at once, relax slowly)
    up_after: int = 3  # frames with room to spare before stepping up
    a: float = 0.0  # fitted intercept, ms
    b: float = 1.0  # fitted slope, ms per unit cost
    modes: int = 1
    relax: float = 0.05  # per frame, how far an unused mode's estimate relaxes back
    after_load: float = 1.5  # the first frame back in a mode after a load plans for this
    # much slower than before it (cores stay slow for a while after
    # a load: docs/benchmarks.md, 'Three fixes from per-frame traces')
    overhead_ms: float = 0.0
    level: int = 0
    mode: int = 0
    unmet_frames: int = 0
    _room: int = 0
    _warned: bool = field(default=False, repr=False)
    _errors: Dict[Tuple[int, Optional[bool]], deque] = field(default_factory=dict, repr=False)  # per (mode, quiet)
    _quiet: Optional[bool] = field(default=None, repr=False)  # the latest load condition seen
    _scales: List[float] = field(default_factory=list, repr=False)
    _base: List[float] = field(default_factory=list, repr=False)
    _seen: List[float] = field(default_factory=list, repr=False)  # each mode's last measured estimate
    _quiet_scales: List[float] = field(default_factory=list, repr=False)  # ... from its last quiet frame
    _quiet_run: int = field(default=0, repr=False)  # consecutive quiet readings
    _busy_seen: bool = field(default=False, repr=False)  # a busy reading since the load was last over
    _load_frames: List[int] = field(default_factory=list, repr=False)  # frames per mode since then
    _frames_seen: int = field(default=0, repr=False)  # frames measured (after one, the overhead is known)

    def __post_init__(self):
        if len(self.levels) != len(self.costs) or not self.levels:
            raise ValueError("BudgetController: one cost per level, at least one level")
        for name in ("quantile", "load_quantile"):
            if not 0.5 <= getattr(self, name) <= 1.0:
                raise ValueError(f"BudgetController: {name} must be in [0.5, 1], got {getattr(self, name)}")
        if list(self.levels) != sorted(self.levels, reverse=True):
            raise ValueError(f"BudgetController: levels must be sorted highest first, got {list(self.levels)}")
        self._reset_modes()
        self.set_budget(self.budget_ms)

    def _reset_modes(self) -> None:
        self._scales, self._base, self._seen = [1.0] * self.modes, [1.0] * self.modes, [1.0] * self.modes
        self._quiet_scales = [1.0] * self.modes
        self._load_frames = [0] * self.modes
        self._errors = {}

    def set_budget(self, budget_ms: float) -> None:
        if not (isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms) and budget_ms > 0):
            raise ValueError(f"budget_ms must be a positive number of milliseconds, got {budget_ms!r}")
        self.budget_ms = float(budget_ms)
        self._room = 0

    def calibrate(self, costs: Sequence[float], latencies_ms: Sequence[float]) -> None:
        """Least-squares line latency = a + b * cost from start-up measurements."""
        n = len(costs)
        if n < 2 or n != len(latencies_ms):
            raise ValueError("calibrate: at least two (cost, latency) pairs")
        mc, ml = sum(costs) / n, sum(latencies_ms) / n
        var = sum((c - mc) ** 2 for c in costs)
        self.b = (
            max(1e-6, sum((c - mc) * (t - ml) for c, t in zip(costs, latencies_ms)) / var) if var > 0 else max(ml, 1e-6)
        )
        self.a = max(0.0, ml - self.b * mc)
        self._reset_modes()

    def calibrate_mode(self, mode: int, level: int, latency_ms: float) -> None:
        """A mode's starting load estimate, from one measured latency at `level`."""
        self._base[mode] = self._scales[mode] = self._seen[mode] = self._quiet_scales[mode] = latency_ms / max(
            self.a + self.b * self.costs[level], 1e-6
        )

    def predict(self, level: int, mode: Optional[int] = None, scale: Optional[float] = None) -> float:
        """Predicted latency at `level` in `mode` (default: the current one), with that mode's load
        estimate unless `scale` is given."""
        mode = self.mode if mode is None else mode
        scale = self._scales[mode] if scale is None else scale
        return scale * (self.a + self.b * self.costs[level]) + self.overhead_ms

    def observe(
        self,
        level: int,
        model_ms: float,
        overhead_ms: float = 0.0,
        mode: Optional[int] = None,
        quiet: Optional[bool] = None,
    ) -> None:
        """Feed one frame's measured model latency (and pre/post-processing time). `quiet`: whether
        nothing else competes for the device now (None: unknown, estimates relax with time)."""
        mode = self.mode if mode is None else mode
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        self._busy_seen = self._busy_seen or quiet is False
        # the load is over at the second quiet reading in a row after a busy one (one quiet
        # reading in the middle of a load is not enough: the reading flickers)
        load_gone = self._busy_seen and self._quiet_run >= 2
        if load_gone:
            self._busy_seen = False
            self._load_frames = [0] * self.modes
        elif self._busy_seen:
            self._load_frames[mode] += 1
        waiting = self._busy_seen and quiet is True  # one quiet reading after a busy one: not yet
        self._quiet = quiet
        base = self.a + self.b * self.costs[level]
        if base > 0 and model_ms > 0:
            self._errors.setdefault((mode, quiet), deque(maxlen=self.window)).append(
                model_ms / (self._scales[mode] * base) - 1
            )
            ratio = model_ms / base
            alpha = self.alpha_up if ratio > self._scales[mode] else self.alpha
            self._scales[mode] += alpha * (ratio - self._scales[mode])
            self._seen[mode] = self._scales[mode]
            if quiet:
                self._quiet_scales[mode] = self._scales[mode]
        for m in range(self.modes):
            if m == mode or quiet is False or waiting:  # under a load an unused mode's estimate stands
                continue
            if load_gone:  # back at once to the speed it had before the load, but the first frame
                # is a cautious trial: right after a load, a VM's cores can stay slower for a while
                self._scales[m] = self._quiet_scales[m]
                self._seen[m] = self._quiet_scales[m] * self.after_load
            else:  # unknown, or quiet all along (a slow frame was jitter): relax with time
                self._scales[m] += self.relax * (self._base[m] - self._scales[m])
        # the first frame's pre/post-processing is the only estimate there is: take it whole
        self.overhead_ms = (
            (1 - self.alpha) * self.overhead_ms + self.alpha * overhead_ms if self._frames_seen else overhead_ms
        )
        self._frames_seen += 1

    def _best(self, mode: int, target: float, scale: Optional[float] = None) -> Optional[int]:
        return next((i for i in range(len(self.levels)) if self.predict(i, mode, scale) <= target), None)

    def choose(self) -> int:
        """The level for the next frame (and `self.mode`, the mode to run it in)."""
        target = self.budget_ms / (1 + self.effective_margin)
        lowest = len(self.levels) - 1
        usable = [m for m in range(self.modes) if self._usable(m)]
        best = {m: self._best(m, target) for m in usable}
        fitting = [m for m in best if best[m] is not None]
        if fitting:  # change mode only for strictly more tokens, or when this one fits no level
            other = min(fitting, key=lambda m: (best[m], self.predict(best[m], m)))
            if best[self.mode] is None or best[other] < best[self.mode]:
                self.mode = other
                # a trial of a mode last seen slower: at a level that fits its last measured speed
                cautious = self._best(other, target, max(self._scales[other], self._seen[other]))
                self.level = max(best[other], lowest if cautious is None else cautious)
                self._room = 0
                return self.level
        if best[self.mode] is None:
            self.mode = min(usable, key=lambda m: self.predict(lowest, m))
            self.unmet_frames += 1
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"latency budget {self.budget_ms:.1f} ms cannot be met even at the lowest keep "
                    f"level ({self.predict(lowest):.1f} ms predicted, plus a "
                    f"{self.effective_margin:.0%} margin for the recent jitter); running at the minimum",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self.level, self._room = lowest, 0
            return self.level
        fit = best[self.mode]
        if fit > self.level:  # must drop: at once
            self.level, self._room = fit, 0
        elif fit < self.level:  # may rise: one step, after several frames of room
            self._room += 1
            if self._room >= self.up_after:
                self.level, self._room = self.level - 1, 0
        else:
            self._room = 0
        return self.level

    def _usable(self, mode: int) -> bool:
        """Whether `mode` may be run next. During a load, not a mode that ran only a few frames of
        it (1 to 9): those frames may have come before the load bit fully (the first one often
        does), so its estimate is too low to trust, and a trial under the load misses by far.
        Nor one that ran none of it and comes before the current mode: modes are ordered from
        most to least slowed by a competing process, so its estimate from before the load is
        far too low (two threads under a load that began while one ran several times slower:
        docs/benchmarks.md, 'Runs 18 to 22')."""
        if mode == self.mode or not self._busy_seen:
            return True
        n = self._load_frames[mode]
        return n >= 10 or (n == 0 and mode > self.mode)

    @property
    def effective_margin(self) -> float:
        """The recent `quantile` prediction error (`load_quantile` under a load) in the current
        mode and load condition, within [margin, max_margin] (under a load, at least
        `load_margin`). Fewer than 10 frames seen there:
        under a load the widest margin; in the stream's first 10 frames the largest error so far,
        and at least `new_margin` (a handful of frames has not shown the jitter yet); else the
        floor."""
        if not self._frames_seen:  # the first frame: pre/post-processing time unknown, plan for the worst
            return self.max_margin
        errs = sorted(self._errors.get((self.mode, self._quiet), ()))
        if len(errs) < 10:  # not yet known
            if self._quiet is False:
                return self.max_margin
            if self._frames_seen < 10:
                return min(self.max_margin, max(self.new_margin, self.margin, errs[-1] if errs else 0.0))
            return self.margin
        busy = self._quiet is False
        q, floor = (self.load_quantile, max(self.margin, self.load_margin)) if busy else (self.quantile, self.margin)
        return min(self.max_margin, max(floor, errs[round(q * (len(errs) - 1))]))

    @property
    def keep_level(self) -> float:
        """The keep level of the current choice (`level` is its index in `levels`)."""
        return self.levels[self.level]


def default_levels() -> List[float]:
    return [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
