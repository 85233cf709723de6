"""Joint fine-tuning of the backbone under the learned token-dropping policy (the paper's last step).

The interpreters are frozen and decide with policy "threshold" (masked execution, so the dropped
tokens are masked out of attention exactly as the packed inference removes them); the backbone
learns to classify from what survives, distilling the full model's logits (a frozen copy that
keeps every token) and the labels:

    loss = alpha * tau^2 * KL(teacher / tau || student / tau) + (1 - alpha) * CE(student, labels)

    from iared_edge.train import finetune_backbone
    history = finetune_backbone(model, train_loader, val_loader, steps=1000, checkpoint="run/ft.pt")
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

from .distributed import is_main, wrap_ddp
from .loop import _batches, evaluate, resume, save_checkpoint, seed_everything


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, tau: float
) -> torch.Tensor:
    kd = (
        F.kl_div(
            F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1), log_target=True, reduction="batchmean"
        )
        * tau
        * tau
    )
    return alpha * kd + (1 - alpha) * F.cross_entropy(student, labels)


class _Student(torch.nn.Module):
    """The forward DDP sees: the model under its dropping policy, logits out."""

    def __init__(self, model, policy: str):
        super().__init__()
        self.model, self.policy = model, policy

    def forward(self, images):
        return self.model(images, policy=self.policy, execution="masked").logits


def finetune_backbone(
    model,
    train_loader: Iterable,
    val_loader: Optional[Iterable] = None,
    steps: int = 1000,
    lr: float = 1e-5,
    weight_decay: float = 0.05,
    alpha: float = 0.5,
    tau: float = 1.0,
    teacher: Optional[torch.nn.Module] = None,
    policy: str = "threshold",
    checkpoint: Optional[str] = None,
    save_every: int = 100,
    val_every: int = 200,
    device: torch.device | str = "cpu",
    amp: Optional[torch.dtype] = None,
    seed: int = 0,
    progress: bool = True,
) -> List[Dict[str, float]]:
    """Fine-tune `model.vit` with the interpreters frozen. `teacher`: a module mapping images to
    logits (default: a frozen copy of the backbone as it is now, every token kept). Resumable
    from `checkpoint`; under torchrun the student is wrapped in DistributedDataParallel."""
    if policy not in ("threshold", "level"):
        raise ValueError(f'policy must be "threshold" or "level" (a dropping policy), got {policy!r}')
    if not 0.0 <= alpha <= 1.0 or tau <= 0:
        raise ValueError(f"alpha must be in [0, 1] and tau > 0, got alpha={alpha}, tau={tau}")
    seed_everything(seed)
    model.to(device)
    if teacher is None:
        teacher = copy.deepcopy(model.vit)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in model.interpreters.parameters():
        p.requires_grad_(False)
    params = [p for p in model.vit.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    student = wrap_ddp(_Student(model, policy), device)
    start, history = resume(checkpoint, "backbone", model.vit, optimizer)

    bar = None
    if progress and is_main():
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="fine-tune", dynamic_ncols=True)
    batches = _batches(train_loader)
    dev_type = torch.device(device).type
    for step in range(start, steps):
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        model.vit.train()
        model.interpreters.eval()
        with torch.autocast(device_type=dev_type, dtype=amp, enabled=amp is not None):
            with torch.no_grad():
                t_logits = teacher(x).float()
            s_logits = student(x).float()
            loss = distill_loss(s_logits, t_logits, y, alpha, tau)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        log = {"step": step + 1, "loss": loss.item(), "accuracy": (s_logits.argmax(-1) == y).float().mean().item()}
        if val_loader is not None and is_main() and ((step + 1) % val_every == 0 or step + 1 == steps):
            log.update({f"val_{k}": v for k, v in evaluate(model, val_loader, device).items()})
        history.append(log)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{log['loss']:.3f}", acc=f"{log['accuracy']:.2f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_checkpoint(checkpoint, "backbone", model.vit, optimizer, step + 1, history)
    if bar is not None:
        bar.close()
    model.eval()
    return history
