"""Train the bundled demo model on digits in clutter, on a CPU, resumably.

    python -m iared_edge.demo.train --out runs/demo            # all phases, resumes where it stopped
    python -m iared_edge.demo.train --out runs/demo --phase interpreters

Phases (each resumes from its own checkpoint in --out; the log is --out/log.jsonl):
  1. `small`: the backbone at 112 px (7x7 patches, 4x cheaper). Digits are taught on black
     backgrounds first, then the photos fade in (a ViT learning from scratch does not find the
     digit in full clutter; see docs/demo.md).
  2. `full`: the same weights at 224 px (position embeddings interpolated), full clutter.
  3. `interpreters`: IA-RED² interpreters initialised from attention (training-free start), then
     REINFORCE stage by stage with the backbone frozen (iared_edge.train.train_interpreters).
  4. `finetune` (optional, --finetune-steps > 0): the backbone fine-tuned under the learned
     policy, distilling the full model (iared_edge.train.finetune_backbone).
  5. `export`: the fp16 safetensors the package ships (iared_edge/assets/demo/).
  6. `report`: REINFORCE against the training-free start on held-out test images (both at the
     same mean keep), and the training curve as a PNG (--out/reinforce.png).
Every image is drawn fresh from the generator (seeded by step), so a resumed run sees the same data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..devices import autocast_dtype
from ..train.loop import atomic_save
from .digits import CLASSES, DigitsInClutter

MEAN = STD = 0.5  # iared_digits_tiny's normalisation (its pretrained_cfg)


@dataclass
class Schedule:
    batch: int = 64
    small_steps: int = 3000
    small_black: int = 500  # steps on black backgrounds only
    small_fade: int = 1000  # then the photos fade in over this many steps
    full_steps: int = 600
    lr: float = 1e-3
    full_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.05  # stochastic depth of the backbone phases (runs/demo32 tried 0: with
    # fresh images every step there is nothing to overfit)
    interp_steps_per_stage: int = 150
    interp_lr: float = 1e-3
    interp_penalty: float = 1.0
    calibrate_keep: float = 0.0  # > 0: after REINFORCE, per-stage thresholds set on unlabelled val
    # images so that this share of patch tokens is kept (0: 0.5 each)
    finetune_steps: int = 0
    finetune_lr: float = 3e-5
    seed: int = 0
    data_offset: int = 0  # backbone phases: step k trains on batch k + data_offset of the split,
    # so a run continuing another's backbone sees images it has not seen
    amp: str = "auto"  # "bf16", "none" (float32) or "auto": bf16 where the CPU has bf16
    # instructions (runs/demo to demo13r), float32 where torch emulates it
    stem_blocks: int = 0  # residual blocks in the convolutional stem (iared_digits_tiny's
    # stem_blocks); added ones start as the identity on --init-backbone
    ema_decay: float = 0.0  # > 0: backbone phases also keep an exponential moving average of the
    # weights (and BatchNorm statistics), updated every step; it is what
    # the phase hands on (0: the last weights)
    photo_weights: str = ""  # a JSON file of sampling weights for the training photos
    # ({"weights": {photo: weight}}, python -m iared_edge.demo.photo_weights),
    # used by every phase that draws training images ("": uniform)
    device: str = "cpu"  # where the backbone phases train: "cpu", "cuda[:N]" or "auto" (the
    # interpreter and fine-tune phases run on the CPU)
    workers: int = 0  # > 0: backbone batches drawn by this many processes (a GPU outruns one
    # CPU thread of the generator); the same images either way


def amp_dtype(s: Schedule, device: str = "cpu") -> Optional[torch.dtype]:
    """The autocast dtype of schedule `s` on `device` (None: float32)."""
    if s.amp not in ("auto", "bf16", "none"):
        raise ValueError(f'amp must be "auto", "bf16" or "none", got {s.amp!r}')
    return autocast_dtype(device, s.amp)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] RGB -> normalised float [B, 3, H, W]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def clutter_at(step: int, s: Schedule) -> float:
    if step < s.small_black:
        return 0.0
    return min(1.0, (step - s.small_black) / max(1, s.small_fade))


def read_photo_weights(path: str) -> Optional[Dict[str, float]]:
    """The {photo: weight} of a --photo-weights file (None for "": every photo equally often)."""
    if not path:
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--photo-weights {path}: cannot read it as JSON ({exc})") from exc
    weights = doc.get("weights") if isinstance(doc, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f'--photo-weights {path}: expected {{"weights": {{photo: weight}}}}')
    return weights


def generator_kwargs(s: Schedule) -> Dict:
    """How every phase that draws training images draws them (DigitsInClutter's keywords)."""
    return {"photo_weights": read_photo_weights(s.photo_weights)}


def draw_batch(gen: DigitsInClutter, k: int, batch: int, size: int, clutter: float, seed: int):
    """Batch `k` of `gen`'s split at `clutter`: (images uint8 [B, H, W, 3], labels). A quarter of
    it gets a random lighter clutter, so the easy case is never forgotten."""
    rng = np.random.default_rng([seed, 7, k])
    cl = np.where(rng.random(batch) < 0.25, rng.uniform(0, clutter, batch), clutter)
    imgs, labels, _ = gen.batch(range(k * batch, (k + 1) * batch), cl, size=size)
    return imgs, labels


_WORKER_GENERATOR: Optional[DigitsInClutter] = None  # each batch process's own generator


def _start_batch_worker(split: str, seed: int, generator: Dict) -> None:
    global _WORKER_GENERATOR
    torch.set_num_threads(1)
    _WORKER_GENERATOR = DigitsInClutter(split, seed=seed, **generator)


def _worker_batch(k: int, batch: int, size: int, clutter: float, seed: int):
    return draw_batch(_WORKER_GENERATOR, k, batch, size, clutter, seed)


def _as_tensors(step: int, drawn) -> Tuple:
    imgs, labels = drawn
    return step, to_input(imgs), torch.from_numpy(labels)


def batches(
    split: str,
    start: int,
    batch: int,
    size: int,
    clutter_fn,
    seed: int,
    prefetch: int = 3,
    offset: int = 0,
    workers: int = 0,
    **generator,
) -> Iterator[Tuple]:
    """(step, images, labels) from `start` on, generated on a background thread (`workers` > 0:
    in that many processes, the same batches). Batch `step` holds images k*batch .. (k+1)*batch-1
    of the split, k = step + offset, so a resumed run sees the same data (`draw_batch`).
    `generator`: DigitsInClutter's keywords (`generator_kwargs`)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers:
        yield from _process_batches(split, start, batch, size, clutter_fn, seed, prefetch, offset, workers, generator)
        return
    gen = DigitsInClutter(split, seed=seed, **generator)
    q: queue.Queue = queue.Queue(prefetch)
    stop = threading.Event()

    def work():
        step = start
        try:
            while not stop.is_set():
                q.put(_as_tensors(step, draw_batch(gen, step + offset, batch, size, clutter_fn(step), seed)))
                step += 1
        except BaseException as exc:  # hand it to the consumer instead of leaving it waiting
            q.put(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise RuntimeError(f"data generation failed: {item}") from item
            yield item
    finally:  # stop the worker and wait for it: a thread left inside torch aborts the interpreter's exit
        stop.set()
        while t.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        t.join()


def _process_batches(split, start, batch, size, clutter_fn, seed, prefetch, offset, workers, generator):
    """`batches` drawn by a pool of processes, in step order, `workers + prefetch` in flight."""
    import collections
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # not fork: the parent may hold CUDA and torch's threads
    with ctx.Pool(workers, initializer=_start_batch_worker, initargs=(split, seed, generator)) as pool:
        pending: collections.deque = collections.deque()
        next_step = start
        for _ in range(workers + prefetch):
            pending.append(
                (
                    next_step,
                    pool.apply_async(_worker_batch, (next_step + offset, batch, size, clutter_fn(next_step), seed)),
                )
            )
            next_step += 1
        while True:
            step, result = pending.popleft()
            try:
                drawn = result.get()
            except Exception as exc:
                raise RuntimeError(f"data generation failed: {exc}") from exc
            pending.append(
                (
                    next_step,
                    pool.apply_async(_worker_batch, (next_step + offset, batch, size, clutter_fn(next_step), seed)),
                )
            )
            next_step += 1
            yield _as_tensors(step, drawn)


def fixed_set(split: str, n: int, size: int, seed: int, clutter: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    imgs, labels, _ = DigitsInClutter(split, seed=seed).batch(range(n), clutter, size=size)
    return to_input(imgs), torch.from_numpy(labels)


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, bs: int = 128, amp: Optional[torch.dtype] = None) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            correct += (model(x[i : i + bs]).argmax(-1) == y[i : i + bs]).sum().item()
    return correct / len(x)


def _log(out: str, record: Dict) -> None:
    print(json.dumps(record), flush=True)
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


MONITOR_IMAGES = 500  # validation images a backbone phase scores every 250 steps (the logs' val_acc)


def phase_weights(state: Dict) -> Dict[str, torch.Tensor]:
    """What a backbone phase's checkpoint hands on: its moving average of the weights when it kept
    one (--ema-decay), else its last weights."""
    return state["ema"] if "ema" in state else state["model"]


def train_backbone(out: str, phase: str, s: Schedule, init: Optional[Dict[str, torch.Tensor]] = None):
    """Supervised training of the plain backbone for one phase ("small" or "full"); resumable."""
    import timm
    from timm.utils import ModelEmaV3

    from ..devices import resolve_device

    device = resolve_device(s.device)
    size, steps, lr = (112, s.small_steps, s.lr) if phase == "small" else (224, s.full_steps, s.full_lr)
    clutter_fn = (lambda step: clutter_at(step, s)) if phase == "small" else (lambda step: 1.0)
    ckpt = os.path.join(out, f"{phase}.pt")
    torch.manual_seed(s.seed)
    if not (0.0 <= s.drop_path < 1.0) or not (0.0 <= s.label_smoothing < 1.0):
        raise ValueError(
            f"--drop-path and --label-smoothing must be in [0, 1), got {s.drop_path} and {s.label_smoothing}"
        )
    model = timm.create_model("iared_digits_tiny", img_size=size, drop_path_rate=s.drop_path, stem_blocks=s.stem_blocks)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    start, state = 0, None
    if os.path.exists(ckpt):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        start = int(state["step"])
        print(f"[{phase}] resumed at step {start}", flush=True)
    elif init is not None:
        load_backbone_init(model, resize_pos_embed(init, model.patch_embed.grid_size[0]))
    model.to(device)  # before the optimizer's state is loaded: it follows its parameters' device
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    ema = None
    if s.ema_decay > 0:
        # a constant decay (no step passed to update): the average starts at the phase's first weights
        ema = ModelEmaV3(model, decay=s.ema_decay)
        if state is not None:
            if "ema" not in state:
                raise ValueError(f"{ckpt} was trained without --ema-decay: resume it without, or start a new --out")
            ema.module.load_state_dict(state["ema"])
    elif state is not None and "ema" in state:
        raise ValueError(f"{ckpt} keeps a moving average (--ema-decay): resume it with the same --ema-decay")
    handed_on = ema.module if ema is not None else model  # what phase_weights reads back from the checkpoint
    if start >= steps:
        return handed_on
    val_x, val_y = (t.to(device) for t in fixed_set("val", MONITOR_IMAGES, size, s.seed))
    amp = amp_dtype(s, device)
    t0 = time.time()
    losses = []
    for step, x, y in batches(
        "train",
        start,
        s.batch,
        size,
        clutter_fn,
        s.seed,
        offset=s.data_offset,
        workers=s.workers,
        **generator_kwargs(s),
    ):
        if step >= steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        cur = lr * min(1.0, (step + 1) / s.warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = cur
        model.train()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=s.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
        done = step + 1
        if done % 50 == 0 or done == steps:
            rec = {
                "phase": phase,
                "step": done,
                "loss": float(np.mean(losses)),
                "lr": cur,
                "clutter": clutter_fn(step),
                "s_per_step": (time.time() - t0) / len(losses),
            }
            if done % 250 == 0 or done == steps:
                rec["val_acc"] = accuracy(model, val_x, val_y, amp=amp)
                if ema is not None:
                    rec["val_acc_ema"] = accuracy(ema.module, val_x, val_y, amp=amp)
            _log(out, rec)
            losses, t0 = [], time.time()
        if done % 100 == 0 or done == steps:
            atomic_save(
                ckpt,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": done,
                    "schedule": asdict(s),
                    **({"ema": ema.module.state_dict()} if ema is not None else {}),
                },
            )
    return handed_on


def resize_pos_embed(state: Dict[str, torch.Tensor], grid: int) -> Dict[str, torch.Tensor]:
    """`state` with its position embeddings resampled to a `grid` x `grid` patch grid (112 px: 7,
    224 px: 14), so weights move between the two resolutions."""
    from timm.layers import resample_abs_pos_embed

    state = dict(state)
    if state["pos_embed"].shape[1] != grid * grid + 1:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=(grid, grid), num_prefix_tokens=1)
    return state


STEM_BLOCKS = "patch_embed.proj.blocks."


def stem_blocks_of(state: Dict[str, torch.Tensor]) -> int:
    """How many residual stem blocks a backbone state dict has."""
    return len({k.split(".")[3] for k in state if k.startswith(STEM_BLOCKS)})


def stem_kwargs(state: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """iared_digits_tiny's stem arguments for a backbone state dict (none for a plain stem)."""
    n = stem_blocks_of(state)
    return {"stem_blocks": n} if n else {}


def load_backbone_init(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Load a backbone to continue from. Stem blocks the model has and `state` lacks keep their
    identity start (a wider stem grown on trained weights); anything else must match exactly."""
    result = model.load_state_dict(state, strict=False)
    grown = [k for k in result.missing_keys if k.startswith(STEM_BLOCKS)]
    if result.unexpected_keys or len(grown) != len(result.missing_keys):
        raise ValueError(
            f"--init-backbone does not fit iared_digits_tiny({stem_kwargs(model.state_dict())}): "
            f"it has {stem_kwargs(state) or 'no'} stem blocks; missing "
            f"{[k for k in result.missing_keys if k not in grown][:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def interpreter_batches(split: str, batch: int, seed: int, start: int = 10_000_000, **generator):
    """An endless loader of full-clutter 224 px batches for train_interpreters (fresh images,
    disjoint from the backbone's by index)."""
    for _, x, y in batches(split, start, batch, 224, lambda step: 1.0, seed, **generator):
        yield x, y


class _Cycle:
    def __init__(self, x, y, bs):
        self.x, self.y, self.bs = x, y, bs

    def __iter__(self):
        for i in range(0, len(self.x), self.bs):
            yield self.x[i : i + self.bs], self.y[i : i + self.bs]


def demo_model(backbone: Dict[str, torch.Tensor]):
    """The IA-RED² demo model on a trained backbone, interpreters at their training-free start."""
    import timm

    from ..model import IARedViT

    kwargs = {"num_classes": 10, **stem_kwargs(backbone)}
    vit = timm.create_model("iared_digits_tiny", **kwargs)
    vit.load_state_dict(backbone)
    return IARedViT(vit, groups=(4, 4, 4), labels=CLASSES, timm_name="iared_digits_tiny", timm_kwargs=kwargs).eval()


def _steps_done(checkpoint: str) -> int:
    """Steps a phase's checkpoint has recorded (0: none yet). Later phases call the earlier ones
    again to get their model back; what those already logged is not logged again."""
    if not os.path.exists(checkpoint):
        return 0
    # mmap: only the step is read, not the 67 MB of weights and optimiser state the phase loads next
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["step"])


def train_interpreters_phase(out: str, s: Schedule, backbone: Dict[str, torch.Tensor]):
    from ..train import ReinforceConfig, evaluate, train_interpreters

    torch.manual_seed(s.seed)
    model = demo_model(backbone)
    val_x, val_y = fixed_set("val", 256, 224, s.seed)
    val = _Cycle(val_x, val_y, 64)
    if _steps_done(os.path.join(out, "interpreters.pt")) == 0:  # the reference REINFORCE starts from
        start = evaluate(model, val, policy="threshold")
        _log(
            out,
            {
                "phase": "interpreters",
                "step": 0,
                "training_free": True,
                **{f"val_{k}": v for k, v in start.items()},
                "val_acc_all": evaluate(model, val, policy="all")["accuracy"],
            },
        )
    history = train_interpreters(
        model,
        interpreter_batches("train", s.batch, s.seed, **generator_kwargs(s)),
        val,
        steps_per_stage=s.interp_steps_per_stage,
        lr=s.interp_lr,
        config=ReinforceConfig(penalty=s.interp_penalty),
        checkpoint=os.path.join(out, "interpreters.pt"),
        save_every=25,
        val_every=50,
        amp=amp_dtype(s),
        seed=s.seed,
        progress=False,
    )
    with open(os.path.join(out, "interpreters_history.json"), "w") as f:
        json.dump(history, f)
    calibrate_phase(out, "interpreters", s, model, val)
    return model


def seed_interpreters(out: str, source: str) -> str:
    """Write `out`/interpreters.pt holding the interpreters of the saved model `source` (a path or
    "demo") as a finished REINFORCE run, so the interpreters phase resumes with nothing to do and
    the fine-tune trains the backbone under them: how a continuation keeps the shipped model's
    learned dropping without its (unshipped) checkpoint. An existing checkpoint is left alone."""
    from ..checkpoint import resolve_model
    from ..train.loop import save_checkpoint
    from ..train.reinforce import freeze_backbone

    path = os.path.join(out, "interpreters.pt")
    if os.path.exists(path):
        return path
    model = resolve_model(source).float()
    if model.num_stages != 3 or any(abs(t - 0.5) > 1e-6 for t in model.thresholds):
        raise ValueError(
            f"--init-interpreters {source}: expected 3 stages at threshold 0.5 (as this script "
            f"trains them), got thresholds {model.thresholds}"
        )
    optimizer = torch.optim.Adam(freeze_backbone(model))
    save_checkpoint(path, "interpreters", model.interpreters, optimizer, _SEED_STEP, [])
    return path


# Any step count at or past the end of a REINFORCE schedule marks the seeded checkpoint finished.
_SEED_STEP = 1 << 30


def calibrate_phase(out: str, phase: str, s: Schedule, model, val) -> None:
    """With --calibrate-keep: per-stage thresholds from the unlabelled validation images so that
    that share of patch tokens is kept (deterministic, so a resumed run sets the same ones)."""
    if not s.calibrate_keep:
        return
    from ..train import calibrate_thresholds, evaluate

    thresholds = calibrate_thresholds(model, [x for x, _ in val], s.calibrate_keep)
    _log(
        out,
        {
            "phase": phase,
            "calibrated_thresholds": thresholds,
            "keep": s.calibrate_keep,
            **{f"val_{k}": v for k, v in evaluate(model, val, policy="threshold").items()},
        },
    )


def export_keep_profile(model, seed: int = 0):
    """Set and return `model.keep_profile`, the share of patch tokens kept after each stage at the
    thresholds (the Runtime's keep levels follow it), on the 256 validation images every export
    measures it on."""
    from ..train import measure_keep_profile

    return measure_keep_profile(model, fixed_set("val", 256, 224, seed)[0].split(64))


def finetune_phase(out: str, s: Schedule, model):
    from ..train import finetune_backbone

    val_x, val_y = fixed_set("val", 256, 224, s.seed)
    done = _steps_done(os.path.join(out, "finetune.pt"))
    history = finetune_backbone(
        model,
        interpreter_batches("train", s.batch, s.seed, start=20_000_000, **generator_kwargs(s)),
        _Cycle(val_x, val_y, 64),
        steps=s.finetune_steps,
        lr=s.finetune_lr,
        checkpoint=os.path.join(out, "finetune.pt"),
        save_every=25,
        val_every=50,
        amp=amp_dtype(s),
        seed=s.seed,
        progress=False,
    )
    for h in history:
        if "val_accuracy" in h and h["step"] > done:
            _log(out, {"phase": "finetune", **h})
    calibrate_phase(out, "finetune", s, model, _Cycle(val_x, val_y, 64))  # the backbone moved: again
    return model


@torch.no_grad()
def report_phase(out: str, s: Schedule, model, images: int = 1000, plot: Optional[str] = None) -> Dict:
    """REINFORCE vs the training-free start at the same keep per stage, on `images` held-out test
    images, compared image by image (paired difference, 95% interval, McNemar's exact test)."""
    from ..train import calibrate_thresholds, paired_comparison, predict, summarize

    test = _Cycle(*fixed_set("test", images, 224, s.seed + 1), 100)

    def run(m, policy):  # (per-image correctness, summary)
        pred, y, keep = predict(m, test, policy=policy)
        return (pred == y).numpy(), summarize(pred, y, keep)

    trained_correct, trained = run(model, "threshold")
    _, full = run(model, "all")
    S = model.num_stages
    keep = [trained[f"keep{i + 1}"] for i in range(S)]  # the trained interpreters' keep after each stage
    free = demo_model(model.vit.state_dict())  # same backbone, interpreters back at the training-free start
    # Calibrated on the test images themselves (no labels used), so both keep the same share of
    # tokens on exactly these images: the comparison is of which tokens each keeps.
    thresholds = calibrate_thresholds(free, [x for x, _ in test], keep)
    free_correct, untrained = run(free, "threshold")
    result = {
        "images": images,
        "all": full,
        "reinforce": trained,
        "training_free_calibrated": untrained,
        "training_free_thresholds": thresholds,
        "target_keep": keep,
        "reinforce_minus_training_free": paired_comparison(trained_correct, free_correct),
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    _log(out, {"phase": "report", **{k: v for k, v in result.items() if k != "images"}})
    hist_path = os.path.join(out, "interpreters_history.json")
    if plot and os.path.exists(hist_path):
        with open(hist_path) as f:
            plot_reinforce(json.load(f), plot, S)
    return result


def plot_reinforce(history, path: str, stages: int) -> None:
    """Reward, accuracy and keep per stage against steps (train batches smoothed; val points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])

    def smooth(key, w=15):
        v = np.array([h[key] for h in history], dtype=float)
        k = np.ones(w) / w
        return np.convolve(np.pad(v, (w // 2, w - 1 - w // 2), mode="edge"), k, mode="valid")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, smooth("reward"), label="sampled decisions")
    axes[0].plot(steps, smooth("greedy_reward"), label="greedy (threshold 0.5)")
    axes[0].set_title("reward (train batches, smoothed)")
    val = [h for h in history if "val_accuracy" in h]
    axes[1].plot(steps, smooth("accuracy"), label="train batches (greedy)")
    axes[1].plot([h["step"] for h in val], [h["val_accuracy"] for h in val], "o-", label="validation")
    axes[1].set_title("top-1, policy threshold")
    for i in range(stages):
        axes[2].plot([h["step"] for h in val], [h[f"val_keep{i + 1}"] for h in val], "o-", label=f"stage {i + 1}")
    axes[2].set_title("patch tokens kept after each stage (val)")
    per_stage = max(1, len(history) // stages)
    for ax in axes:
        for b in range(1, stages):
            ax.axvline(b * per_stage, color="grey", lw=0.5, ls="--")
        ax.set_xlabel("REINFORCE step (dashed: next stage added)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument(
        "--phase", choices=["all", "small", "full", "interpreters", "finetune", "export", "report"], default="all"
    )
    ap.add_argument(
        "--plot", default=None, help='report: where to draw the REINFORCE curve (default --out/reinforce.png; "": none)'
    )
    ap.add_argument("--report-images", type=int, default=1000)
    ap.add_argument(
        "--init-backbone",
        default=None,
        help="phase small or full: start from this saved model's backbone (e.g. the shipped demo "
        "model; position embeddings resampled) instead of from scratch / the small "
        "phase: how a later session continues training",
    )
    ap.add_argument(
        "--init-interpreters",
        default=None,
        help="keep this saved model's interpreters (e.g. the shipped demo model's) instead of "
        "training new ones: written as a finished interpreters checkpoint in --out",
    )
    ap.add_argument("--export-to", default=None, help="where to write the fp16 model (default: the package's asset)")
    for k, v in asdict(Schedule()).items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    args = ap.parse_args(argv)
    s = Schedule(**{k: getattr(args, k) for k in asdict(Schedule())})
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    phases = (
        ["small", "full", "interpreters"] + (["finetune"] if s.finetune_steps else []) + ["export", "report"]
        if args.phase == "all"
        else [args.phase]
    )

    def load(name):
        path = os.path.join(args.out, f"{name}.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: run phase {name!r} first")
        return phase_weights(torch.load(path, map_location="cpu", weights_only=True))

    def init_backbone():
        from ..checkpoint import resolve_model

        return {
            k[len("vit.") :]: v
            for k, v in resolve_model(args.init_backbone).state_dict().items()
            if k.startswith("vit.")
        }

    if args.init_interpreters:
        print(f"interpreters: {seed_interpreters(args.out, args.init_interpreters)}", flush=True)
    model = None
    for phase in phases:
        if phase == "small":
            train_backbone(args.out, "small", s, init=init_backbone() if args.init_backbone else None)
        elif phase == "full":
            init = init_backbone() if args.init_backbone and args.phase == "full" else load("small")
            train_backbone(args.out, "full", s, init=init)
        elif phase == "interpreters":
            model = train_interpreters_phase(args.out, s, load("full"))
        elif phase == "finetune":
            if model is None:
                model = train_interpreters_phase(args.out, s, load("full"))  # resumes: already done
            model = finetune_phase(args.out, s, model)
        elif phase in ("export", "report") and model is None:
            model = train_interpreters_phase(args.out, s, load("full"))  # resumes: already done
            if s.finetune_steps:
                model = finetune_phase(args.out, s, model)
        if phase == "report":
            report_phase(
                args.out,
                s,
                model,
                images=args.report_images,
                plot=os.path.join(args.out, "reinforce.png") if args.plot is None else args.plot,
            )
        elif phase == "export":
            from ..checkpoint import save_model
            from . import DEMO_MODEL

            dest = args.export_to or DEMO_MODEL
            profile = export_keep_profile(model, s.seed)
            print("keep profile (256 validation images): " + " / ".join(f"{p:.3f}" for p in profile), flush=True)
            save_model(model, dest, dtype=torch.float16)
            print(f"wrote {dest} ({os.path.getsize(dest) / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
