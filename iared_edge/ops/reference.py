"""Pure-PyTorch reference implementations of the packed-token ops.

They define what the compiled kernels in `iared_edge._C` must compute, and they are what runs
when the extension is missing. Layout everywhere: tokens [T, C] (every kept token of every image,
back to back), offsets [B+1] int32 (cumulative counts), positions [T] int32 (0 = class token,
then any other prefix tokens, then the patch grid row-major).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def sequence_ids(offsets: torch.Tensor, total: int) -> torch.Tensor:
    """Image index of every packed row, [T] int64."""
    lengths = (offsets[1:] - offsets[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=total)


def level_keep_count(n: int, level: float) -> int:
    """Patch tokens kept by policy "level": ceil(level * n), robust to float error (0.7 * 10 is 7)."""
    return min(n, max(0, math.ceil(level * n - 1e-6)))


def interpreter_fold(
    cls: torch.Tensor,
    wq: torch.Tensor,
    bq: torch.Tensor,
    wk: torch.Tensor,
    bk: torch.Tensor,
    num_heads: int,
    eps: float = 1e-6,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each image's folded class-token query: q = wq LN(cls) + bq (LN without affine), then per
    head h vecs[b, h] = q_h wk_h and biases[b, h] = q_h . bk_h, with wq, wk [H*D, C] and bq, bk
    [H*D]. Returns (vecs [B, H, C], biases [B, H]). Two batched matmuls: on a GPU each op is a
    launch, so the fewest."""
    B, C = cls.shape
    H = num_heads
    D = wq.shape[0] // H
    q = F.linear(F.layer_norm(cls, (C,), eps=eps), wq, bq).view(B, H, 1, D)
    vecs = torch.matmul(q, wk.view(H, D, C)).view(B, H, C)
    biases = torch.matmul(q, bk.view(H, D, 1)).view(B, H)
    return vecs, biases


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
    """Keep probability of every token: mean over heads of sigmoid(vecs[b,h] . LN(x) + biases[b,h]).

    The unfused composition (layer_norm, matmul, sigmoid, mean), one matmul per image. Returns
    (probs [T], keep [T] bool or None); keep = probs > threshold, prefix tokens forced. Computed
    and returned in float32, or in float64 for float64 tokens (the tests' ground truth).
    """
    B, H, C = vecs.shape
    acc = torch.float64 if tokens.dtype == torch.float64 else torch.float32
    xn = F.layer_norm(tokens.to(acc), (C,), eps=eps)
    probs = torch.empty(tokens.shape[0], dtype=acc, device=tokens.device)
    bounds = offsets.tolist()
    for b in range(B):
        s, e = bounds[b], bounds[b + 1]
        logits = xn[s:e] @ vecs[b].to(acc).t() + biases[b].to(acc)
        probs[s:e] = torch.sigmoid(logits).mean(-1)
    keep = None
    if threshold is not None:
        keep = probs > threshold
        if positions is not None:
            keep |= positions < num_prefix
    return probs, keep


def topk_keep(
    scores: torch.Tensor, offsets: torch.Tensor, positions: torch.Tensor, level: float, num_prefix: int = 1
) -> torch.Tensor:
    """Keep flags [T] for policy "level": per image the top ceil(level * n) patch tokens by score
    (ties: the earlier token wins), prefix tokens always kept."""
    keep = positions < num_prefix
    bounds = offsets.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        patch = (~keep[s:e]).nonzero().squeeze(1)
        k = level_keep_count(patch.numel(), level)
        if k == 0:
            continue
        order = torch.sort(scores[s:e][patch], descending=True, stable=True).indices
        keep[s + patch[order[:k]]] = True
    return keep


def compact(
    tokens: torch.Tensor, offsets: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, num_prefix: int = 1
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove the tokens whose keep flag is False (prefix tokens are forced kept), preserving order.

    Returns the new (tokens [T', C], offsets [B+1] int32, positions [T'] int32), contiguous.
    """
    keep = keep.bool() | (positions < num_prefix)
    index = keep.nonzero().squeeze(1)
    counts = torch.zeros(offsets.numel() - 1, dtype=torch.int64, device=tokens.device)
    counts.index_add_(0, sequence_ids(offsets, tokens.shape[0]), keep.long())
    new_offsets = torch.zeros_like(offsets)
    new_offsets[1:] = torch.cumsum(counts, 0).to(offsets.dtype)
    return tokens.index_select(0, index), new_offsets, positions.index_select(0, index)
