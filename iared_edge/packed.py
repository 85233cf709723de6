"""Packed tokens: every kept token of every image in one contiguous buffer, no padding.

    Packed(tokens [T, C], offsets [B+1] int32, positions [T] int32)

Image b owns rows offsets[b]..offsets[b+1]; positions say where each row came from (0 = class
token, then other prefix tokens, then the patch grid). Row-wise layers (norms, Linear, MLP) run on
all T rows at once; attention runs per sequence over the same buffer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Packed:
    tokens: torch.Tensor     # [T, C]
    offsets: torch.Tensor    # [B+1] int32
    positions: torch.Tensor  # [T] int32

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> "Packed":
        """All L tokens of each of B images, [B, L, C] -> packed."""
        B, L, C = x.shape
        offsets = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=x.device)
        positions = torch.arange(L, dtype=torch.int32, device=x.device).repeat(B)
        return cls(x.reshape(B * L, C).contiguous(), offsets, positions)

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    def lengths(self) -> List[int]:
        """Tokens per image, on the host (one device sync per stage on GPU)."""
        return (self.offsets[1:] - self.offsets[:-1]).tolist()


def packed_attention(attn: nn.Module, x: torch.Tensor, lengths: List[int]) -> torch.Tensor:
    """timm `Attention.forward` over packed rows x [T, C]: each image attends within itself.

    Equal lengths (policy "level", "all") run as one batched SDPA; unequal ones one SDPA per image
    on views of the same buffer (no padding, no gather).
    """
    T = x.shape[0]
    H, D = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(T, 3, H, D).unbind(1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    p = attn.attn_drop.p if attn.training else 0.0
    if len(set(lengths)) <= 1:
        B = len(lengths)
        n = lengths[0] if lengths else 0
        q, k, v = (t.view(B, n, H, D).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(T, H * D)
    else:
        out = torch.empty(T, H, D, dtype=v.dtype, device=v.device)
        start = 0
        for n in lengths:
            sl = slice(start, start + n)
            start += n
            if n == 0:
                continue
            o = F.scaled_dot_product_attention(q[sl].transpose(0, 1), k[sl].transpose(0, 1),
                                               v[sl].transpose(0, 1), dropout_p=p)
            out[sl] = o.transpose(0, 1)
        out = out.view(T, H * D)
    out = attn.norm(out)
    return attn.proj_drop(attn.proj(out))


def packed_block(block: nn.Module, x: torch.Tensor, lengths: List[int]) -> torch.Tensor:
    """timm `Block.forward` over packed rows: the block's own modules, attention per sequence."""
    x = x + block.drop_path1(block.ls1(packed_attention(block.attn, block.norm1(x), lengths)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
