"""The multi-head interpreter of IA-RED²: one per group of blocks, scoring every surviving token.

score_h(j) = sigmoid(scale * q_h(cls) . k_h(x_j)),  keep probability = mean over heads,
with q, k from one Linear over a LayerNorm without affine. Inference folds the class-token query
into per-head vectors so scoring a token costs O(C·H), not O(C²) (see `fold`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from . import ops


class Interpreter(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Interpreter: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.qk = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unfolded form (training, masked execution): x [B, L, C], class token at 0 -> probs [B, L]."""
        return torch.sigmoid(self.head_logits(x)).mean(1)

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, C], class token at 0 -> per-head logits [B, H, L] (the keep probability is the
        mean over heads of their sigmoids)."""
        B, L, C = x.shape
        q, k = self.qk(self.norm(x)).view(B, L, 2, self.num_heads, self.head_dim).unbind(2)
        # [B, H, L, D] @ [B, H, D, 1]: plain MatMul (exports to ONNX/TensorRT without Einsum)
        return (k.transpose(1, 2) @ (q[:, 0] * self.scale).unsqueeze(-1)).squeeze(-1)

    def fold(
        self, cls: torch.Tensor, weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-image folded query from class tokens [B, C]: vecs [B, H, C], biases [B, H] (float32,
        even inside a caller's autocast), so that logit_h(x) = vecs[b, h] . LN(x) + biases[b, h].
        `weights`: the (weight, bias) of `qk` to fold with (default: the current ones), for scores
        computed after the forward."""
        wq, bq, wk, bk = self.fold_weights(weights)  # the scale is in wq, bq
        x = cls if cls.dtype == torch.float32 else cls.float()
        return ops.interpreter_fold(x.contiguous(), wq, bq, wk, bk, self.num_heads, self.norm.eps)

    def fold_weights(
        self, weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(wq, bq, wk, bk) float32, what `fold` multiplies by (`ops.interpreter_fold`'s weights):
        the query half of `qk` times the scale, the key half; made once per weights."""
        w = weights or (self.qk.weight, self.qk.bias)
        return self._fold_constants(*w)

    def _fold_constants(self, w: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The float32 weight slices `fold` multiplies by, made once per weights (their identity
        and version: an optimiser step or load_state_dict makes new ones), not per forward."""
        try:
            key = (id(w), w._version, id(b), b._version, w.device, w.dtype)
        except RuntimeError:  # tensors that keep no version (inference tensors): no cache
            key = None
        cached = getattr(self, "_folded", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        C = w.shape[1]
        with torch.no_grad():  # inference constants: no graph kept (a copy.deepcopy of the model works)
            w32, b32 = w.detach().float(), b.detach().float()
            consts = (
                (w32[:C] * self.scale).contiguous(),
                (b32[:C] * self.scale).contiguous(),
                w32[C:].contiguous(),
                b32[C:].contiguous(),
            )
        if key is not None:
            self._folded = (key, consts)
        return consts

    @torch.no_grad()
    def init_from_attention(self, norm: nn.LayerNorm, qkv: nn.Linear) -> None:
        """Training-free start: become a block's class-token attention logits through a sigmoid.

        The block's norm affine (gamma, beta) folds into the Linear: W' = W diag(gamma), b' = b + W beta.
        """
        C = self.qk.in_features
        w = qkv.weight[: 2 * C].float()
        b = qkv.bias[: 2 * C].float() if qkv.bias is not None else torch.zeros(2 * C, device=w.device)
        gamma = norm.weight.float() if norm.weight is not None else torch.ones(C, device=w.device)
        beta = norm.bias.float() if norm.bias is not None else torch.zeros(C, device=w.device)
        self.qk.weight.copy_(w * gamma[None, :])
        self.qk.bias.copy_(b + w @ beta)
        self.norm.eps = norm.eps
