"""Average the weights of saved demo models (a "model soup" of consecutive continuations).

    .venv/bin/python benchmarks/demo_weight_average.py A.safetensors B.safetensors [...] --out SOUP.safetensors

Two continuations of one training lineage (each started from the other's export) lie in one
basin; the mean of their weights is often better than either end point. Every model must have
the same architecture and interpreters' thresholds; the soup takes the first model's config
(labels, thresholds) and re-measures its keep profile on the same 256 validation images the
training export uses. BatchNorm statistics are averaged too (an approximation: the conv stem's
running means and variances of weights this close barely differ). Compare the result with
`demo_operating_points.py` like any other model.
"""
import argparse

import torch

from iared_edge.checkpoint import load_model, save_model
from iared_edge.demo.train import export_keep_profile


def average_state(states):
    """The element-wise mean of float tensors; integer entries (BatchNorm's step counts) from the
    first state. Keys and shapes must match exactly."""
    first = states[0]
    for i, s in enumerate(states[1:], 1):
        if s.keys() != first.keys():
            raise ValueError(f"model {i} has other parameters than model 0: {sorted(s.keys() ^ first.keys())[:5]}")
        for k, v in s.items():
            if v.shape != first[k].shape:
                raise ValueError(f"{k}: shape {tuple(v.shape)} in model {i}, {tuple(first[k].shape)} in model 0")
    return {k: (torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in first.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="saved .safetensors files (or demo)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if len(args.models) < 2:
        ap.error("give at least two models")
    torch.set_num_threads(args.threads)
    models = [load_model(m).eval() for m in args.models]
    ref = models[0].config()
    for path, m in zip(args.models[1:], models[1:]):
        cfg = m.config()
        for key in ("timm_name", "groups", "thresholds"):
            if cfg.get(key) != ref.get(key):
                raise SystemExit(f"{path}: {key} {cfg.get(key)!r} differs from {args.models[0]}'s {ref.get(key)!r}")
    soup = models[0]
    soup.load_state_dict(average_state([m.state_dict() for m in models]))
    profile = export_keep_profile(soup)
    print("keep profile (256 validation images): " + " / ".join(f"{p:.3f}" for p in profile))
    save_model(soup, args.out, dtype=torch.float16)
    print(f"wrote {args.out}: the mean of {', '.join(args.models)}")


if __name__ == "__main__":
    main()
