"""Packed-token ops: the compiled kernels of `iared_edge._C` when built, else the PyTorch reference.

`backend()` says which runs. The kernels never copy silently (a non-contiguous or wrong-dtype
input is an error, not a copy). The compiled ops check every input themselves, so a call goes
straight to them; only when one refuses its inputs are they checked again here, in Python, for
an error that names the problem. The Python checks cost a sizeable share of a batch-1 compaction
(docs/benchmarks.md, 'Ops (issue 3)'), so they stay off the hot path.

In eager mode on plain tensors a call goes to `iared_edge._C` directly; the same kernels are
registered as `torch.ops.iared.*`, and that route is taken wherever PyTorch must see the op (jit
tracing, torch.compile, tensor subclasses). The dispatcher's argument boxing costs about what a
batch-1 compaction costs (same section). The ops have no backward: they are for inference
(the model's "packed" execution runs under no_grad; training uses "masked").
"""

from __future__ import annotations

import importlib
import warnings
from typing import Optional, Tuple

import torch

from . import reference
from .reference import level_keep_count, sequence_ids

try:  # importing registers torch.ops.iared.*
    _C = importlib.import_module("iared_edge._C")
    _IMPORT_ERROR: Optional[BaseException] = None
    # resolved once: looking an op up through torch.ops costs microseconds per call
    _scores_op = torch.ops.iared.interpreter_scores.default
    _fold_op = torch.ops.iared.interpreter_fold.default
    _stage_op = torch.ops.iared.select_stage.default
    _topk_op = torch.ops.iared.topk_keep.default
    _compact_op = torch.ops.iared.compact.default
    _scores_direct, _topk_direct, _compact_direct = _C.interpreter_scores, _C.topk_keep, _C.compact
    _fold_direct, _stage_direct = _C.interpreter_fold, _C.select_stage
    _CUDA_BUILT = bool(_C.built_with_cuda())
    _is_tracing, _is_compiling = torch._C._is_tracing, torch.compiler.is_compiling  # bound once: µs count here
except ImportError as exc:  # the package works without it, slower
    _C = None
    _IMPORT_ERROR = exc
    _CUDA_BUILT = False
    _scores_op = _topk_op = _compact_op = _scores_direct = _topk_direct = _compact_direct = None
    _fold_op = _fold_direct = _stage_op = _stage_direct = None


if _C is not None:
    # Fake (meta) kernels: what each op returns, by shape and dtype alone, so FakeTensorMode,
    # torch.compile and torch.export trace through the compiled ops. The compaction's row count
    # depends on the data: a size only the kernel knows (an unbacked symbol in a trace).

    @torch.library.register_fake("iared::interpreter_scores")
    def _scores_fake(tokens, offsets, positions, vecs, biases, threshold, num_prefix, eps, emit_keep):
        T = tokens.shape[0]
        return tokens.new_empty(T, dtype=torch.float32), tokens.new_empty(T if emit_keep else 0, dtype=torch.bool)

    @torch.library.register_fake("iared::interpreter_fold")
    def _fold_fake(cls, wq, bq, wk, bk, num_heads, eps):
        B, C = cls.shape
        return cls.new_empty(B, num_heads, C), cls.new_empty(B, num_heads)

    @torch.library.register_fake("iared::select_stage")
    def _stage_fake(tokens, offsets, positions, wq, bq, wk, bk, num_heads, eps, level, threshold, num_prefix):
        T = tokens.shape[0]
        kept = torch.library.get_ctx().new_dynamic_size(max=T if isinstance(T, int) else None)
        return (
            tokens.new_empty(T, dtype=torch.float32),
            tokens.new_empty(kept, tokens.shape[1]),
            torch.empty_like(offsets),
            positions.new_empty(kept),
        )

    @torch.library.register_fake("iared::topk_keep")
    def _topk_fake(scores, offsets, positions, level, num_prefix):
        return scores.new_empty(scores.shape[0], dtype=torch.bool)

    @torch.library.register_fake("iared::compact")
    def _compact_fake(tokens, offsets, positions, keep, num_prefix, out=None):
        T = tokens.shape[0]
        kept = torch.library.get_ctx().new_dynamic_size(max=T if isinstance(T, int) else None)
        return (tokens.new_empty(kept, tokens.shape[1]), torch.empty_like(offsets), positions.new_empty(kept))


_warned = False
_forced_reference = False
TOKEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = [
    "backend",
    "interpreter_fold",
    "interpreter_scores",
    "select_stage",
    "topk_keep",
    "compact",
    "use_reference",
    "level_keep_count",
    "sequence_ids",
    "reference",
]


def _warn_missing() -> None:
    """Once, when the compiled ops are not built (stacklevel: the caller of the op or of backend())."""
    global _warned
    if _C is None and not _warned:
        _warned = True
        warnings.warn(
            f"iared_edge._C is not built ({_IMPORT_ERROR}); using the pure-PyTorch "
            "reference ops (slower). Reinstall with `pip install --no-build-isolation .`",
            RuntimeWarning,
            stacklevel=3,
        )


def use_reference(flag: bool = True) -> None:
    """Force the pure-PyTorch ops (for comparisons and debugging)."""
    global _forced_reference
    _forced_reference = flag


def backend(device: torch.device | str | None = None) -> str:
    """The backend the ops run on for `device` (default: CUDA if available): "cuda", "cpu" or "torch"."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if _C is None:
        _warn_missing()
        return "torch"
    if _forced_reference:
        return "torch"
    if device.type == "cuda":
        return "cuda" if _CUDA_BUILT else "torch"
    return "cpu" if device.type == "cpu" else "torch"


def _compiled(t: torch.Tensor, direct, boxed):
    """The compiled op to run on t (called on every op, so kept cheap), or None for the reference:
    `direct` (iared_edge._C, no dispatcher) for a plain tensor with nothing tracing or compiling,
    else `boxed` (torch.ops.iared.*, which traces and torch.compile record)."""
    if _C is None or _forced_reference or not (t.is_cpu or (t.is_cuda and _CUDA_BUILT)):
        return None
    if _is_compiling():  # first: torch.compile must not trace into the pybind check below
        return boxed
    return direct if type(t) is torch.Tensor and not _is_tracing() else boxed


def _check_packed(
    name: str, tokens: torch.Tensor, offsets: torch.Tensor, positions: Optional[torch.Tensor] = None
) -> None:
    if tokens.dim() != 2:
        raise ValueError(f"{name}: tokens must be [T, C], got shape {tuple(tokens.shape)}")
    if tokens.dtype not in TOKEN_DTYPES:
        raise TypeError(f"{name}: tokens dtype {tokens.dtype} not supported (float32, float16, bfloat16)")
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype != torch.int32:
        raise ValueError(
            f"{name}: offsets must be a 1-D int32 tensor [B+1], got {offsets.dtype} {tuple(offsets.shape)}"
        )
    if offsets.device.type == "cpu" and (
        int(offsets[0]) != 0 or int(offsets[-1]) != tokens.shape[0] or bool((offsets[1:] < offsets[:-1]).any())
    ):
        raise ValueError(
            f"{name}: offsets must start at 0, never decrease and end at T={tokens.shape[0]}, got "
            f"{offsets.numel()} values from {int(offsets[0])} to {int(offsets[-1])}"
        )
    tensors = [("tokens", tokens), ("offsets", offsets)]
    if positions is not None:
        if positions.shape != (tokens.shape[0],) or positions.dtype != torch.int32:
            raise ValueError(
                f"{name}: positions must be int32 [T={tokens.shape[0]}], got {positions.dtype} {tuple(positions.shape)}"
            )
        tensors.append(("positions", positions))
    for label, t in tensors:
        if t.device != tokens.device:
            raise ValueError(f"{name}: {label} is on {t.device} but tokens are on {tokens.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: {label} must be contiguous (call .contiguous() once, outside the hot path)")


def interpreter_fold(
    cls: torch.Tensor,
    wq: torch.Tensor,
    bq: torch.Tensor,
    wk: torch.Tensor,
    bk: torch.Tensor,
    num_heads: int,
    eps: float = 1e-6,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The interpreter's folded class-token query (float32): vecs [B, H, C], biases [B, H] from
    the class tokens cls [B, C], see `reference.interpreter_fold`. On a CPU one compiled call that
    streams each weight once for every image (at batch 1 the weights are all it reads); elsewhere
    two batched matmuls."""
    op = _compiled(cls, _fold_direct, _fold_op) if cls.is_cpu else None
    if op is not None:
        try:
            return tuple(op(cls, wq, bq, wk, bk, num_heads, eps))
        except RuntimeError:
            _check_fold_args(cls, wq, bq, wk, bk, num_heads)
            raise
    _check_fold_args(cls, wq, bq, wk, bk, num_heads)
    return _fold_matmuls(cls, wq, bq, wk, bk, num_heads, eps)


def _fold_matmuls(cls, wq, bq, wk, bk, num_heads, eps):
    """The reference fold, float32 even inside a caller's autocast."""
    if torch.is_autocast_enabled(cls.device.type):
        with torch.autocast(cls.device.type, enabled=False):
            return reference.interpreter_fold(cls, wq, bq, wk, bk, num_heads, eps)
    return reference.interpreter_fold(cls, wq, bq, wk, bk, num_heads, eps)


def select_stage(
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    positions: torch.Tensor,
    fold_weights: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    num_heads: int,
    eps: float = 1e-6,
    level: Optional[float] = None,
    threshold: Optional[float] = None,
    num_prefix: int = 1,
    cls: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stage's selection: fold each image's class token (its first row, or `cls` [B, C] when
    at hand) with the interpreter's `fold_weights` (wq, bq, wk, bk), score every row, keep the top
    ceil(level * n) patches of each image (`level`) or those scoring over `threshold`, compact.
    Returns (probs [T] float32, tokens [T', C], offsets [B+1], positions [T']). On a CPU one
    compiled call (which reads each image's first row, its class token, and ignores `cls`);
    elsewhere the four ops."""
    if (level is None) == (threshold is None):
        raise ValueError("select_stage: give one of level= or threshold=")
    if level is not None and not 0.0 <= level <= 1.0:  # the compiled op reads a negative level as "threshold"
        raise ValueError(f"select_stage: level must be in [0, 1], got {level}")
    wq, bq, wk, bk = fold_weights
    op = _compiled(tokens, _stage_direct, _stage_op) if tokens.is_cpu else None
    if op is not None:
        try:
            lv, th = (float(level), 0.0) if level is not None else (-1.0, float(threshold))
            return tuple(op(tokens, offsets, positions, wq, bq, wk, bk, num_heads, eps, lv, th, num_prefix))
        except RuntimeError:
            _check_packed("select_stage", tokens, offsets, positions)
            if tokens.shape[1] == 0 and tokens.shape[0] > 0:
                raise ValueError("select_stage: tokens have no channels (C = 0)") from None
            _check_fold_weights("select_stage", tokens.shape[1], tokens.device, wq, bq, wk, bk, num_heads)
            raise
    return _select_stage_ops(
        tokens, offsets, positions, fold_weights, num_heads, eps, level, threshold, num_prefix, cls
    )


def _select_stage_ops(tokens, offsets, positions, fold_weights, num_heads, eps, level, threshold, num_prefix, cls):
    """`select_stage` as the four ops (where there is no one-call kernel: a GPU, no extension)."""
    if cls is None:
        cls = tokens[offsets[:-1].long()]
    cls = cls.float().contiguous()
    if cls.is_cpu:
        vecs, biases = interpreter_fold(cls, *fold_weights, num_heads, eps)
    else:  # the matmuls straight away, checked only if they refuse (Python checks per stage cost launches' time)
        try:
            vecs, biases = _fold_matmuls(cls, *fold_weights, num_heads, eps)
        except RuntimeError:
            _check_fold_args(cls, *fold_weights, num_heads)
            raise
    probs, keep = interpreter_scores(tokens, offsets, vecs, biases, threshold, positions, num_prefix, eps)
    if level is not None:
        keep = topk_keep(probs, offsets, positions, level, num_prefix)
    return (probs, *compact(tokens, offsets, positions, keep, num_prefix))


def _check_fold_args(cls, wq, bq, wk, bk, num_heads) -> None:
    if cls.dim() != 2:
        raise ValueError(f"interpreter_fold: cls must be [B, C], got shape {tuple(cls.shape)}")
    if cls.dtype != torch.float32 or not cls.is_contiguous():
        raise ValueError(f"interpreter_fold: cls must be contiguous float32 on {cls.device}, got {cls.dtype}")
    _check_fold_weights("interpreter_fold", cls.shape[1], cls.device, wq, bq, wk, bk, num_heads)


def _check_fold_weights(name, C, device, wq, bq, wk, bk, num_heads) -> None:
    if num_heads < 1 or wq.dim() != 2 or wq.shape[1] != C or wq.shape[0] % num_heads:
        raise ValueError(f"{name}: wq must be [H*D, C={C}] with H={num_heads}, got shape {tuple(wq.shape)}")
    Q = wq.shape[0]
    if wk.shape != wq.shape or bq.shape != (Q,) or bk.shape != (Q,):
        raise ValueError(
            f"{name}: wk must be {tuple(wq.shape)} and bq, bk [{Q}], got {tuple(wk.shape)}, "
            f"{tuple(bq.shape)}, {tuple(bk.shape)}"
        )
    for label, t in (("wq", wq), ("bq", bq), ("wk", wk), ("bk", bk)):
        if t.dtype != torch.float32 or t.device != device or not t.is_contiguous():
            raise ValueError(f"{name}: {label} must be contiguous float32 on {device}, got {t.dtype} on {t.device}")


def interpreter_scores(
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    vecs: torch.Tensor,
    biases: torch.Tensor,
    threshold: Optional[float] = None,
    positions: Optional[torch.Tensor] = None,
    num_prefix: int = 1,
    eps: float = 1e-6,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Fused interpreter scoring. Returns (keep probability [T] float32, keep flags [T] bool or None).

    vecs [B, H, C] and biases [B, H] (float32) are each image's folded per-head query (see
    `Interpreter.fold`); with `threshold`, keep = prob > threshold, prefix tokens forced kept
    (needs `positions`).
    """
    op = _compiled(tokens, _scores_direct, _scores_op)
    if op is not None:
        try:
            pos = positions if positions is not None else torch.empty(0, dtype=torch.int32, device=tokens.device)
            probs, keep = op(
                tokens,
                offsets,
                pos,
                vecs,
                biases,
                float(threshold) if threshold is not None else 0.0,
                num_prefix,
                eps,
                threshold is not None,
            )
            return probs, (keep if threshold is not None else None)
        except RuntimeError:
            _check_scores_args(tokens, offsets, vecs, biases, threshold, positions)
            raise
    _check_scores_args(tokens, offsets, vecs, biases, threshold, positions)
    _warn_missing()
    return reference.interpreter_scores(tokens, offsets, vecs, biases, threshold, positions, num_prefix, eps)


def _check_scores_args(tokens, offsets, vecs, biases, threshold, positions) -> None:
    _check_packed("interpreter_scores", tokens, offsets, positions)
    B = offsets.numel() - 1
    if vecs.dim() != 3 or vecs.shape[0] != B or vecs.shape[2] != tokens.shape[1]:
        raise ValueError(f"interpreter_scores: vecs must be [B={B}, H, C={tokens.shape[1]}], got {tuple(vecs.shape)}")
    if biases.shape != vecs.shape[:2]:
        raise ValueError(
            f"interpreter_scores: biases must be [B, H]={tuple(vecs.shape[:2])}, got {tuple(biases.shape)}"
        )
    for label, t in (("vecs", vecs), ("biases", biases)):
        if t.dtype != torch.float32 or t.device != tokens.device or not t.is_contiguous():
            raise ValueError(
                f"interpreter_scores: {label} must be contiguous float32 on {tokens.device}, "
                f"got {t.dtype} on {t.device}"
            )
    if threshold is not None and positions is None:
        raise ValueError("interpreter_scores: a threshold needs positions (prefix tokens are forced kept)")


def topk_keep(
    scores: torch.Tensor, offsets: torch.Tensor, positions: torch.Tensor, level: float, num_prefix: int = 1
) -> torch.Tensor:
    """Keep flags [T] bool: per image the top ceil(level * n) of its n patch tokens (ties: earlier
    token wins); prefix tokens always kept."""
    op = _compiled(scores, _topk_direct, _topk_op)
    if op is not None:
        try:
            return op(scores, offsets, positions, float(level), num_prefix)
        except RuntimeError:
            _check_topk_args(scores, offsets, positions, level)
            raise
    _check_topk_args(scores, offsets, positions, level)
    _warn_missing()
    return reference.topk_keep(scores, offsets, positions, level, num_prefix)


def _check_topk_args(scores, offsets, positions, level) -> None:
    _check_packed("topk_keep", scores.view(-1, 1), offsets, positions)
    if scores.dtype != torch.float32:
        raise TypeError(f"topk_keep: scores must be float32, got {scores.dtype}")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"topk_keep: level must be in [0, 1], got {level}")


def compact(
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    positions: torch.Tensor,
    keep: torch.Tensor,
    num_prefix: int = 1,
    out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop the tokens whose flag is False into one contiguous buffer, order kept, prefix tokens
    forced kept. Returns (tokens [T', C], offsets [B+1] int32, positions [T'] int32).

    `out`: a reusable [>= T', C] buffer (same dtype and device) the kept rows are written to; the
    tokens returned are then its first T' rows. Reusing one spares fresh pages on every call.
    """
    op = _compiled(tokens, _compact_direct, _compact_op)
    if op is not None:
        try:
            return tuple(op(tokens, offsets, positions, keep, num_prefix, out))
        except RuntimeError:
            _check_compact_args(tokens, offsets, positions, keep, out)
            if keep.is_contiguous():
                raise
            return tuple(op(tokens, offsets, positions, keep.contiguous(), num_prefix, out))
    _check_compact_args(tokens, offsets, positions, keep, out)
    _warn_missing()
    new_tokens, new_offsets, new_positions = reference.compact(tokens, offsets, positions, keep, num_prefix)
    if out is not None:
        if out.shape[0] < new_tokens.shape[0]:
            raise ValueError(f"compact: out has {out.shape[0]} rows, {new_tokens.shape[0]} are kept")
        new_tokens = out[: new_tokens.shape[0]].copy_(new_tokens)
    return new_tokens, new_offsets, new_positions


def _check_compact_args(tokens, offsets, positions, keep, out) -> None:
    _check_packed("compact", tokens, offsets, positions)
    if keep.shape != (tokens.shape[0],) or keep.dtype != torch.bool or keep.device != tokens.device:
        raise ValueError(
            f"compact: keep must be bool [T={tokens.shape[0]}] on {tokens.device}, got "
            f"{keep.dtype} {tuple(keep.shape)} on {keep.device}"
        )
    if out is not None and (
        out.dim() != 2
        or out.shape[1] != tokens.shape[1]
        or out.dtype != tokens.dtype
        or out.device != tokens.device
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"compact: out must be a contiguous [>= T', {tokens.shape[1]}] {tokens.dtype} tensor "
            f"on {tokens.device}, got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
