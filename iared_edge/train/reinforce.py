"""REINFORCE for the interpreters (the paper's method), backbone frozen.

Per image, decisions are sampled from Bernoulli(p) for every surviving patch token at every
trained stage (masked execution, so the log-probabilities are simple). The reward is, when the
prediction is right, the share of the network's work saved - each stage's dropped fraction weighted
by that stage's share of the blocks - and, when wrong, -penalty. The baseline is the reward of the
greedy threshold decisions on the same images (self-critical), which cuts the variance. The
curriculum trains stage 1 first (later stages keep every token), then stages 1-2, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch


@dataclass
class ReinforceConfig:
    penalty: float = 1.0  # reward of a wrong prediction: -penalty
    stage_weights: Optional[Sequence[float]] = None  # default: each stage's share of the blocks


def stage_weights(model, config: ReinforceConfig) -> torch.Tensor:
    w = config.stage_weights or [g / sum(model.groups) for g in model.groups]
    if len(w) != model.num_stages:
        raise ValueError(f"stage_weights: one per stage ({model.num_stages}), got {len(w)}")
    return torch.tensor(w, dtype=torch.float32)


def rewards(
    logits: torch.Tensor, labels: torch.Tensor, keep_ratio: torch.Tensor, weights: torch.Tensor, penalty: float
) -> torch.Tensor:
    """[B] reward: right -> sum_s w_s (1 - keep_s); wrong -> -penalty."""
    correct = logits.argmax(-1) == labels
    saved = ((1 - keep_ratio) * weights.to(keep_ratio.device)).sum(1)
    return torch.where(correct, saved, torch.full_like(saved, -penalty))


def freeze_backbone(model) -> List[torch.nn.Parameter]:
    """Freeze the timm backbone; return the interpreters' parameters (what REINFORCE trains)."""
    for p in model.vit.parameters():
        p.requires_grad_(False)
    params = [p for p in model.interpreters.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


class PolicySampler(torch.nn.Module):
    """REINFORCE's gradient-carrying forward as a module, so DistributedDataParallel can wrap it:
    Bernoulli decisions at the first `stages` stages, every token kept after. Only the
    log-probabilities carry a graph (the frozen backbone's logits are detached), so DDP sees
    exactly the interpreters being trained."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, stages: int):
        rest = ["all"] * (self.model.num_stages - stages)
        out = self.model(images, policy=["sample"] * stages + rest, execution="masked")
        return out.logits.detach(), out.keep_ratio, out.log_probs[:, :stages]


def reinforce_step(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    stages: int,
    config: ReinforceConfig = ReinforceConfig(),
    sampler: Optional[torch.nn.Module] = None,
) -> Dict[str, float]:
    """One policy-gradient step on the interpreters of the first `stages` stages. `sampler`: a
    PolicySampler of `model` (wrapped in DistributedDataParallel under torchrun); default: one."""
    S = model.num_stages
    if not 1 <= stages <= S:
        raise ValueError(f"stages must be in 1..{S}, got {stages}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [B={images.shape[0]}], got {tuple(labels.shape)}")
    rest = ["all"] * (S - stages)
    w = stage_weights(model, config)
    model.eval()  # no dropout / drop-path in the frozen backbone; the sampling is the exploration
    logits, keep_ratio, log_probs = (sampler or PolicySampler(model))(images, stages)
    with torch.no_grad():
        greedy = model(images, policy=["threshold"] * stages + rest, execution="masked")
        r = rewards(logits, labels, keep_ratio, w, config.penalty)
        baseline = rewards(greedy.logits, labels, greedy.keep_ratio, w, config.penalty)
    loss = -((r - baseline) * log_probs.sum(1)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "loss": loss.item(),
        "reward": r.mean().item(),
        "greedy_reward": baseline.mean().item(),
        "accuracy": (greedy.logits.argmax(-1) == labels).float().mean().item(),
        **{f"keep{s + 1}": greedy.keep_ratio[:, s].mean().item() for s in range(S)},
    }
