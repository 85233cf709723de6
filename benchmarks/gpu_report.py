"""The last step of benchmarks/gpu_check.sh: a short latency-budget run on the GPU, then one JSON
report of the whole check (machine, build, SASS/PTX, test summaries, benchmark tables).

    python benchmarks/gpu_report.py --out out/gpu_check [--frames 150] [--budget-ms 8]

The budget run streams the bundled demo clip through `Runtime("demo", device="cuda", budget_ms=...)`
(CUDA graphs per keep level) and through eager and CUDA-graph Runtimes at one keep level, and
records their stats() side by side.
"""

import argparse
import datetime
import json
import os
import re


def budget_run(frames: int, budget_ms: float) -> dict:
    import torch

    from iared_edge import Runtime

    out = {}
    runs = {
        "budget": dict(budget_ms=budget_ms),
        "level_0.5_cuda_graphs": dict(policy="level", level=0.5),
        "level_0.5_eager": dict(policy="level", level=0.5, cuda_graphs=False),
        "threshold_eager": dict(),
    }
    for name, kwargs in runs.items():
        for precision in ("fp32", "fp16"):
            try:
                with Runtime("demo", device="cuda", precision=precision, **kwargs) as rt:
                    for i, _ in enumerate(rt.stream("demo")):
                        if i + 1 >= frames:
                            break
                    stats = rt.stats()
                out[f"{name}_{precision}"] = {
                    k: stats[k]
                    for k in (
                        "frames",
                        "fps",
                        "latency_ms",
                        "deadline_hit_rate",
                        "mean_keep_ratio",
                        "backend",
                        "precision",
                    )
                }
            except Exception as exc:  # the report records a failure and goes on
                out[f"{name}_{precision}"] = {"error": f"{type(exc).__name__}: {exc}"}
    out["device"] = torch.cuda.get_device_name()
    return out


def summary_line(path: str) -> str:
    if not os.path.exists(path):
        return "missing"
    lines = [ln for ln in open(path).read().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    return lines[-1] if lines else "no summary (timed out?)"


def read(path: str) -> str:
    return open(path).read() if os.path.exists(path) else "missing"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out/gpu_check")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--budget-ms", type=float, default=8.0)
    args = ap.parse_args()
    o = args.out
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": read(os.path.join(o, "machine.txt")).splitlines()[-3:],
        "cuobjdump": read(os.path.join(o, "cuobjdump.txt")),
        "pytest_gpu": summary_line(os.path.join(o, "pytest_gpu.txt")),
        "pytest_rest": summary_line(os.path.join(o, "pytest_rest.txt")),
        "bench_model_cuda": read(os.path.join(o, "bench_model_cuda.txt")),
        "bench_demo_cuda": {p: read(os.path.join(o, f"bench_demo_cuda_{p}.txt")) for p in ("fp32", "fp16")},
    }
    try:
        report["budget_run"] = budget_run(args.frames, args.budget_ms)
    except Exception as exc:
        report["budget_run"] = {"error": f"{type(exc).__name__}: {exc}"}
    with open(os.path.join(o, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k in ("pytest_gpu", "pytest_rest", "budget_run")}, indent=1))


if __name__ == "__main__":
    main()
