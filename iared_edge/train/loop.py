"""The interpreter training loop: REINFORCE stage by stage, validation, resumable checkpoints.

    from iared_edge.train import train_interpreters
    history = train_interpreters(model, train_loader, val_loader, steps_per_stage=500,
                                 checkpoint="run/interp.pt")

`checkpoint` is written every `save_every` steps (the interpreters, the optimiser, the position
in the curriculum, the history) and resumed from when it exists, so an interrupted run goes on
where it stopped. Loading uses torch.load(weights_only=True).
"""

from __future__ import annotations

import math
import os
import random
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch

from .distributed import is_main, wrap_ddp
from .reinforce import PolicySampler, ReinforceConfig, freeze_backbone, reinforce_step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(path: str, state: Dict) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a broken checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def resume(checkpoint: Optional[str], key: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """(start step, history) from a checkpoint written by `save_checkpoint`, restoring `module`
    (stored under `key`), the optimiser and the RNG; (0, []) when there is none yet."""
    if not checkpoint or not os.path.exists(checkpoint):
        return 0, []
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state["history"])


def save_checkpoint(
    checkpoint: Optional[str],
    key: str,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: List,
) -> None:
    """What `resume` reads; written by the main process only (under torchrun all ranks hold the same)."""
    if checkpoint and is_main():
        atomic_save(
            checkpoint,
            {
                key: module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "history": history,
                "rng": torch.get_rng_state(),
            },
        )


def _batches(loader: Iterable) -> Iterator:
    while True:  # cycle over epochs
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("train loader yields no batches")


@torch.no_grad()
def predict(
    model,
    loader: Iterable,
    device: torch.device | str = "cpu",
    policy: str = "threshold",
    max_batches: Optional[int] = None,
):
    """(predicted class [n], labels [n], patch tokens kept after each stage [n, S]) over `loader`
    ((images, labels) batches): per image, for paired comparisons of two models on the same images."""
    model.eval()
    preds, labels, keep = [], [], []
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        out = model(x.to(device), policy=policy)
        preds.append(out.logits.argmax(-1).cpu())
        labels.append(y.cpu())
        keep.append(out.keep_ratio.float().cpu())
    if not preds:
        raise ValueError("validation loader yields no images")
    return torch.cat(preds), torch.cat(labels), torch.cat(keep)


def evaluate(
    model,
    loader: Iterable,
    device: torch.device | str = "cpu",
    policy: str = "threshold",
    max_batches: Optional[int] = None,
) -> Dict[str, float]:
    """Top-1 accuracy and mean keep ratio per stage over `loader` ((images, labels) batches)."""
    return summarize(*predict(model, loader, device, policy, max_batches))


def summarize(pred: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> Dict[str, float]:
    """`predict`'s per-image output as top-1 accuracy and mean keep ratio per stage."""
    return {
        "accuracy": (pred == labels).float().mean().item(),
        **{f"keep{s + 1}": keep[:, s].mean().item() for s in range(keep.shape[1])},
    }


def paired_comparison(correct_a, correct_b) -> Dict[str, float]:
    """Accuracy of A minus B on the same images, with its 95% interval and McNemar's exact test.
    Only the images where exactly one is right carry information, so this resolves differences
    far smaller than two independent accuracies' intervals would."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equal, non-empty 1-D correctness vectors, got {a.shape} and {b.shape}")
    n = a.size
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    diff = (only_a - only_b) / n
    se = (
        np.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n
    )  # sd of the per-image differences / sqrt(n)
    k, m = min(only_a, only_b), only_a + only_b
    # two-sided exact binomial test of only_a ~ Bin(only_a + only_b, 1/2)
    # (integer arithmetic: 2.0 ** m overflows a float beyond 1,023 discordant images)
    p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)
    return {
        "images": n,
        "accuracy_a": float(a.mean()),
        "accuracy_b": float(b.mean()),
        "difference": diff,
        "ci95_low": diff - 1.96 * se,
        "ci95_high": diff + 1.96 * se,
        "only_a_right": only_a,
        "only_b_right": only_b,
        "mcnemar_p": p,
    }


def train_interpreters(
    model,
    train_loader: Iterable,
    val_loader: Optional[Iterable] = None,
    steps_per_stage: int = 500,
    lr: float = 1e-3,
    config: ReinforceConfig = ReinforceConfig(),
    checkpoint: Optional[str] = None,
    save_every: int = 100,
    val_every: int = 200,
    device: torch.device | str = "cpu",
    amp: Optional[torch.dtype] = None,
    seed: int = 0,
    progress: bool = True,
) -> List[Dict[str, float]]:
    """REINFORCE on the interpreters with the backbone frozen: stage 1 for `steps_per_stage`
    steps, then stages 1-2, ... Returns the history (one dict per step, validations included)."""
    seed_everything(seed)
    model.to(device)
    params = freeze_backbone(model)
    optimizer = torch.optim.Adam(params, lr=lr)
    sampler = wrap_ddp(PolicySampler(model), device)  # DDP only when launched by torchrun
    S = model.num_stages
    start, history = resume(checkpoint, "interpreters", model.interpreters, optimizer)

    total = steps_per_stage * S
    bar = None
    if progress and is_main():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="interpreters", dynamic_ncols=True)
    batches = _batches(train_loader)
    for step in range(start, total):
        stages = step // steps_per_stage + 1
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=amp, enabled=amp is not None):
            log = reinforce_step(model, x, y, optimizer, stages, config, sampler=sampler)
        log.update(step=step + 1, stages=stages)
        if val_loader is not None and is_main() and ((step + 1) % val_every == 0 or step + 1 == total):
            log.update({f"val_{k}": v for k, v in evaluate(model, val_loader, device).items()})
        history.append(log)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                stages=stages,
                reward=f"{log['reward']:.3f}",
                acc=f"{log['accuracy']:.2f}",
                keep="/".join(f"{log[f'keep{s + 1}']:.2f}" for s in range(S)),
            )
        if (step + 1) % save_every == 0 or step + 1 == total:
            save_checkpoint(checkpoint, "interpreters", model.interpreters, optimizer, step + 1, history)
    if bar is not None:
        bar.close()
    return history
