"""Packed tokens: every kept token of every image in one contiguous buffer, no padding.

    Packed(tokens [T, C], offsets [B+1] int32, positions [T] int32)

Image b owns rows offsets[b]..offsets[b+1]; positions say where each row came from (0 = class
token, then other prefix tokens, then the patch grid). Row-wise layers (norms, Linear, MLP) run on
all T rows at once; attention runs per sequence over the same buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops


@dataclass
class Packed:
    tokens: torch.Tensor  # [T, C]
    offsets: torch.Tensor  # [B+1] int32
    positions: torch.Tensor  # [T] int32

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> Packed:
        """All L tokens of each of B images, [B, L, C] -> packed."""
        B, L, C = x.shape
        offsets = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=x.device)
        positions = torch.arange(L, dtype=torch.int32, device=x.device)
        positions = positions.repeat(B) if B != 1 else positions  # a repeat is a copy, even of one
        return cls(x.reshape(B * L, C).contiguous(), offsets, positions)

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    def lengths(self) -> List[int]:
        """Tokens per image, on the host (a device sync on a GPU: the GPU path does without)."""
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def sequences(self, max_len: int) -> Sequences:
        """For attention: the lengths read on a CPU (free there), not on a GPU."""
        return Sequences(self.offsets, max_len, None if self.tokens.is_cuda else self.lengths())


try:  # flash-attention's varlen kernel: packed rows [T, H, D] and cumulative offsets, one launch
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # torch before 2.10
    _varlen_attn = None

VARLEN_DTYPES = (torch.float16, torch.bfloat16)  # what flash varlen attention takes


@dataclass
class Sequences:
    """Where each image's rows are, for attention over a packed buffer.

    offsets [B+1] int32 on the tokens' device; max_len an upper bound on any image's length, known
    on the host without reading the device; lengths each image's length on the host (the CPU
    path's, None on a GPU, where reading them back would cost a sync)."""

    offsets: torch.Tensor
    max_len: int
    lengths: Optional[List[int]] = None


def packed_attention(attn: nn.Module, x: torch.Tensor, seqs: Union[Sequences, List[int]]) -> torch.Tensor:
    """timm `Attention.forward` over packed rows x [T, C]: each image attends within itself.

    On a CUDA device, fp16/bf16: one flash varlen launch over the whole buffer (the offsets as its
    cumulative sequence lengths). CUDA fp32 (which flash does not take): one SDPA over the buffer
    with a block-diagonal mask (no host read either; the fast GPU path is fp16). On a CPU, with
    the lengths on the host: equal lengths as one batched SDPA, unequal ones one SDPA per image on
    views of the same buffer (no padding, no gather). `seqs`: a Sequences, or the CPU's lengths.
    """
    if not isinstance(seqs, Sequences):
        seqs = Sequences(offsets=None, max_len=max(seqs, default=0), lengths=list(seqs))
    T = x.shape[0]
    H, D = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(T, 3, H, D).unbind(1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    p = attn.attn_drop.p if attn.training else 0.0
    if seqs.lengths is None:  # a GPU: nothing read back from the device
        if _varlen_attn is not None and q.dtype in VARLEN_DTYPES and p == 0.0:
            out = _varlen_attn(q, k, v, seqs.offsets, seqs.offsets, seqs.max_len, seqs.max_len)
        else:
            seq = ops.sequence_ids(seqs.offsets, T)
            mask = seq[:, None] == seq[None, :]
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask, dropout_p=p
            )[0].transpose(0, 1)
        out = out.reshape(T, H * D)
    elif len(set(seqs.lengths)) <= 1:
        B = len(seqs.lengths)
        n = seqs.lengths[0] if seqs.lengths else 0
        q, k, v = (t.view(B, n, H, D).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(T, H * D)
    else:
        out = torch.empty(T, H, D, dtype=v.dtype, device=v.device)
        start = 0
        for n in seqs.lengths:
            sl = slice(start, start + n)
            start += n
            if n == 0:
                continue
            o = F.scaled_dot_product_attention(
                q[sl].transpose(0, 1), k[sl].transpose(0, 1), v[sl].transpose(0, 1), dropout_p=p
            )
            out[sl] = o.transpose(0, 1)
        out = out.view(T, H * D)
    out = attn.norm(out)
    return attn.proj_drop(attn.proj(out))


def packed_block(block: nn.Module, x: torch.Tensor, seqs: Union[Sequences, List[int]]) -> torch.Tensor:
    """timm `Block.forward` over packed rows: the block's own modules, attention per sequence."""
    x = x + block.drop_path1(block.ls1(packed_attention(block.attn, block.norm1(x), seqs)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
