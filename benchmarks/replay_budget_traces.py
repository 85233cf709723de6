"""Replay this VM's measured latency jitter through the budget controller, offline, in seconds.

bench_budget.py takes minutes a pair on a quiet machine and its runs differ by as much as
controller versions do, so comparing margin settings that way needs many runs. This replays the
jitter those runs recorded instead: benchmarks/data/budget_traces/ holds the per-frame dumps
(`--dump`) of runs 1-3, 5-7 and 13-16 of docs/benchmarks.md (controller and fixed level; latency ms,
patch tokens kept, keep level, threads). From the controller's quiet phases (before the load, and
after it from 10 frames on) each frame's latency over the median of its neighbours run the same
way (same level and threads, within 25 frames) gives a multiplicative jitter trace with the
VM's spikes where they happened. A simulated device (latency a line in FLOPs cost, as the
controller models it) is multiplied by each trace and run through a fresh BudgetController.

What it measures: how often a setting keeps >= 99% of a 300-frame phase within budget on
real jitter, and at what keep. What it does not: loads, slow-downs and the return after a load
(the traces are normalised by their local median), so it ranks margin settings, and a setting it
favours still needs bench_budget.py runs.

    .venv/bin/python benchmarks/replay_budget_traces.py [--quantile 0.99] [--margin 0.1]
    .venv/bin/python benchmarks/replay_budget_traces.py --load [--load-margin 0.4]

With --load it replays the load phases instead (from their 5th frame on), the controller told the
device is busy: how its under-load margin covers the competing process's spikes.
"""

import argparse
import glob
import gzip
import json
import os

import numpy as np
from bench_budget import jitter_multipliers  # run as a script from benchmarks/

from iared_edge.runtime.controller import BudgetController, default_levels

TRACES = os.path.join(os.path.dirname(__file__), "data", "budget_traces")


def jitter_traces(load: bool = False):
    """(name, jitter multipliers) per quiet phase of each recorded run (`load`: per load phase,
    from its 5th frame on, when the controller had settled on the load)."""
    out = []
    for path in sorted(glob.glob(os.path.join(TRACES, "*.json.gz"))):
        with gzip.open(path, "rt") as f:
            d = json.load(f)
        rows = np.array(d["controller"])
        loads = d.get("loads", [d["load"]])  # bench_budget.py --cycles: several loads
        name = os.path.basename(path).split(".json")[0]
        if load:
            phases = [(f"load {k}", slice(a + 5, b)) for k, (a, b) in enumerate(loads)]
        else:  # quiet stretches: before the first load, and from 10 frames after each load on
            ends = [a for a, _ in loads[1:]] + [len(rows)]
            phases = [("before", slice(0, loads[0][0]))] + [
                (f"after {k}", slice(b + 10, e)) for k, ((_, b), e) in enumerate(zip(loads, ends))
            ]
        for phase, sl in phases:
            out.append((f"{name} {phase}", jitter_multipliers(rows[sl])))
    return out


def replay(mult, budget_at: float, skip: int = 20, quiet: bool = True, **controller_kw):
    """Hit rate and mean keep level of a fresh controller on a device whose latency is
    (8 + 60 * cost) ms times the jitter trace (about DeiT-S's shape here), 1 ms pre/post-processing."""
    levels = default_levels()
    costs = [v**1.6 for v in levels]
    lat = [8.0 + 60.0 * c for c in costs]
    budget = lat[-1] + budget_at * (lat[0] - lat[-1])
    ctrl = BudgetController(levels, costs, budget, **controller_kw)
    ctrl.calibrate(costs, lat)
    hits, keeps = [], []
    for m in mult:
        level = ctrl.choose()
        ms = lat[level] * m
        ctrl.observe(level, ms, 1.0, quiet=quiet)
        hits.append(ms + 1.0 <= budget)
        keeps.append(levels[level])
    return float(np.mean(hits[skip:])), float(np.mean(keeps[skip:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quantile", type=float, default=BudgetController.quantile)
    ap.add_argument("--margin", type=float, default=BudgetController.margin)
    ap.add_argument("--max-margin", type=float, default=BudgetController.max_margin)
    ap.add_argument("--window", type=int, default=BudgetController.window)
    ap.add_argument("--load-margin", type=float, default=BudgetController.load_margin)
    ap.add_argument(
        "--load",
        action="store_true",
        help="replay the load phases' jitter, with the controller told the device is busy",
    )
    args = ap.parse_args()
    kw = dict(
        quantile=args.quantile,
        margin=args.margin,
        max_margin=args.max_margin,
        window=args.window,
        load_margin=args.load_margin,
    )
    traces = jitter_traces(args.load)
    print(f"# {len(traces)} {'load' if args.load else 'quiet'} phases from {TRACES}; controller {kw}")
    print("| budget at | phases under 99% | lowest hit rate | mean hit rate | mean keep level |")
    print("| --- | --- | --- | --- | --- |")
    for budget_at in (0.5, 0.75):
        res = np.array([replay(m, budget_at, quiet=not args.load, **kw) for _, m in traces])
        print(
            f"| {budget_at} | {(res[:, 0] < 0.99).sum()} of {len(res)} | {res[:, 0].min():.1%} | "
            f"{res[:, 0].mean():.2%} | {res[:, 1].mean():.3f} |"
        )


if __name__ == "__main__":
    main()
