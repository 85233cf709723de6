"""Replay this VM's measured latency jitter through the budget controller, offline, in seconds.

bench_budget.py takes 5 minutes a pair on a quiet machine and its runs differ by as much as
controller versions do, so comparing margin settings that way needs many runs. This replays the
jitter those runs recorded instead: benchmarks/data/budget_traces/ holds the per-frame dumps
(`--dump`) of runs 1-3 and 5-7 of docs/benchmarks.md (controller and fixed ratio; latency ms,
patch tokens kept, keep level, threads). From the controller's quiet phases (before the load, and
after it from 10 frames on) each frame's latency over the median of its neighbours run the same
way (same level and threads, within 25 frames) gives a multiplicative jitter trace with the
VM's spikes where they happened. A simulated device (latency a line in FLOPs cost, as the
controller models it) is multiplied by each trace and run through a fresh BudgetController.

What it measures: how often a setting keeps >= 99% of a 300-frame quiet phase within budget on
real jitter, and at what keep. What it does not: loads, slow-downs and the return after a load
(the traces are normalised by their local median), so it ranks margin settings, and a setting it
favours still needs bench_budget.py runs.

    .venv/bin/python benchmarks/replay_budget_traces.py [--quantile 0.99] [--margin 0.1]
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


def jitter_traces():
    """(name, jitter multipliers) per quiet phase of each recorded run."""
    out = []
    for path in sorted(glob.glob(os.path.join(TRACES, "*.json.gz"))):
        with gzip.open(path, "rt") as f:
            d = json.load(f)
        rows = np.array(d["controller"])
        start, stop = d["load"]
        name = os.path.basename(path).split(".json")[0]
        for phase, sl in (("before", slice(0, start)), ("after", slice(stop + 10, len(rows)))):
            out.append((f"{name} {phase}", jitter_multipliers(rows[sl])))
    return out


def replay(mult, budget_at: float, skip: int = 20, **controller_kw):
    """Hit rate and mean keep level of a fresh controller on a device whose latency is
    (8 + 60 * cost) ms times the jitter trace (about DeiT-S's shape here), 1 ms pre/post-processing."""
    levels = default_levels()
    costs = [l ** 1.6 for l in levels]
    lat = [8.0 + 60.0 * c for c in costs]
    budget = lat[-1] + budget_at * (lat[0] - lat[-1])
    ctrl = BudgetController(levels, costs, budget, **controller_kw)
    ctrl.calibrate(costs, lat)
    hits, keeps = [], []
    for m in mult:
        level = ctrl.choose()
        ms = lat[level] * m
        ctrl.observe(level, ms, 1.0, quiet=True)
        hits.append(ms + 1.0 <= budget)
        keeps.append(levels[level])
    return float(np.mean(hits[skip:])), float(np.mean(keeps[skip:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quantile", type=float, default=BudgetController.quantile)
    ap.add_argument("--margin", type=float, default=BudgetController.margin)
    ap.add_argument("--max-margin", type=float, default=BudgetController.max_margin)
    ap.add_argument("--window", type=int, default=BudgetController.window)
    args = ap.parse_args()
    kw = dict(quantile=args.quantile, margin=args.margin, max_margin=args.max_margin, window=args.window)
    traces = jitter_traces()
    print(f"# {len(traces)} quiet phases from {TRACES}; controller {kw}")
    print("| budget at | phases under 99% | lowest hit rate | mean hit rate | mean keep level |")
    print("| --- | --- | --- | --- | --- |")
    for budget_at in (0.5, 0.75):
        res = np.array([replay(m, budget_at, **kw) for _, m in traces])
        print(f"| {budget_at} | {(res[:, 0] < 0.99).sum()} of {len(res)} | {res[:, 0].min():.1%} | "
              f"{res[:, 0].mean():.2%} | {res[:, 1].mean():.3f} |")


if __name__ == "__main__":
    main()
