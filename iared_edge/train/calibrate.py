"""Per-stage thresholds from unlabelled images so that a target fraction of patch tokens is kept.

The overall keep is the mean over stages of the fraction of patch tokens each stage keeps. How it
is spread over the stages (`shape`):
- "geometric": r, r², r³, ... (a token dropped stays dropped, so each stage keeps a share of
  what survived), with r solved so that their mean is the target: for untrained interpreters;
- "learned": the per-stage keeps the model's current thresholds give on these images, scaled
  together to the target: for trained interpreters, whose allocation (e.g. REINFORCE on the demo
  keeping all of stage 1's tokens at stage 2 and few at stage 3) a geometric spread would override.
Stage by stage, with the earlier thresholds fixed, the threshold is the score quantile that keeps
that stage's share. Unless the spread is geometric, the per-stage shares also become the model's
`keep_profile`, which the Runtime's keep levels then follow.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Union

import torch

from ..model import scaled_keep_targets


def geometric_keep_targets(keep: float, stages: int) -> List[float]:
    """Fractions of patch tokens kept after each stage, r^(s+1), whose mean is `keep`."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(mid ** (s + 1) for s in range(stages)) / stages < keep:
            lo = mid
        else:
            hi = mid
    return [hi ** (s + 1) for s in range(stages)]


@torch.no_grad()
def calibrate_thresholds(
    model, batches: Iterable[torch.Tensor], keep: Union[float, Sequence[float]], shape: str = "geometric"
) -> List[float]:
    """Set and return `model.thresholds` so that policy "threshold" keeps on average `keep` of the
    patch tokens over the network on images like `batches` (normalised [B, 3, H, W] tensors),
    spread over the stages by `shape` ("geometric" or "learned", see the module docstring).
    `keep` may instead give the fraction of patch tokens to keep after each stage (non-increasing)."""
    batches = [b for b in batches]
    if not batches:
        raise ValueError("calibrate_thresholds: no images")
    if shape not in ("geometric", "learned"):
        raise ValueError(f"shape must be 'geometric' or 'learned', got {shape!r}")
    model.eval()
    S, N = model.num_stages, model.num_patches
    if isinstance(keep, (int, float)) and shape == "learned":
        targets = scaled_keep_targets(keep, _threshold_keep(model, batches))
    elif isinstance(keep, (int, float)):
        targets = geometric_keep_targets(keep, S)
    else:
        targets = [float(k) for k in keep]
        if (
            len(targets) != S
            or not all(0.0 <= t <= 1.0 for t in targets)
            or any(b > a + 1e-9 for a, b in zip(targets, targets[1:]))
        ):
            raise ValueError(
                f"keep: one fraction in [0, 1] per stage ({S}), non-increasing "
                f"(a dropped token stays dropped), got {list(keep)}"
            )
    thresholds = [0.0] * S  # a score is a sigmoid mean, > 0: stages not yet calibrated keep all
    images = sum(b.shape[0] for b in batches)
    for s in range(S):
        alive_scores = []
        for b in batches:
            out = model(b, policy="threshold", thresholds=thresholds)
            alive = out.keep_masks[:, s - 1] if s > 0 else torch.ones_like(out.keep_masks[:, 0])
            alive_scores.append(out.scores[:, s][alive])
        scores = torch.cat(alive_scores)
        want = int(round(targets[s] * N * images))
        if want >= scores.numel():
            thresholds[s] = 0.0
        elif want <= 0:
            thresholds[s] = 1.0
        else:  # keep the `want` highest: the threshold sits between the want-th and the next score
            top = torch.topk(scores, want + 1).values
            thresholds[s] = float((top[-1] + top[-2]) / 2)
    model.thresholds = thresholds
    if shape == "learned" or not isinstance(keep, (int, float)):
        floor = 1.0 / N  # a profile share must be > 0: a stage keeping nothing counts as one token
        model.keep_profile = [max(floor, t) for t in targets]
    return thresholds


def _threshold_keep(model, batches: Sequence[torch.Tensor]) -> List[float]:
    """Mean share of patch tokens policy "threshold" keeps after each stage over `batches`."""
    return torch.cat([model(b, policy="threshold").keep_ratio.float() for b in batches]).mean(0).tolist()


@torch.no_grad()
def measure_keep_profile(model, batches: Iterable[torch.Tensor]) -> List[float]:
    """Set and return `model.keep_profile`: the share of patch tokens policy "threshold" keeps
    after each stage at the model's thresholds, on images like `batches` (normalised tensors)."""
    batches = [b for b in batches]
    if not batches:
        raise ValueError("measure_keep_profile: no images")
    model.eval()
    floor = 1.0 / model.num_patches
    profile = [max(floor, k) for k in _threshold_keep(model, batches)]
    for s in range(1, len(profile)):  # float rounding of equal means must not break monotonicity
        profile[s] = min(profile[s], profile[s - 1])
    model.keep_profile = profile
    return profile
