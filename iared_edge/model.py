"""IARedViT: IA-RED² on a timm VisionTransformer, wrapped, not copied.

The timm model lives at `self.vit` under its own parameter names, so any timm/DeiT state dict loads
into it; the only new parameters are one `Interpreter` per group of blocks (`self.interpreters`).

Two executions of the same network:
  "packed"  inference: dropped tokens are really removed; the batch is one contiguous buffer of
            kept tokens plus offsets (`Packed`), attention per sequence; ops from `iared_edge.ops`.
  "masked"  training (the paper's formulation): every token stays, decisions enter as attention
            masks over keys, so sampled decisions have simple log-probabilities and gradients.
For the same decisions both give the same logits (tested).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import cached_property
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer

from . import ops
from .interpreter import Interpreter
from .packed import Packed, Sequences, packed_block

POLICIES = ("all", "threshold", "level", "sample", "given")
EXECUTIONS = ("packed", "masked")
PerStage = Union[float, Sequence[float]]


HEATMAP_TIE_BREAK = 0.01
# A 3x3 binomial kernel: each patch's heat is 1/4 its own survival probability and 3/4 its
# neighbours' (1/8 per side, 1/16 per corner). Objects span several patches, a lone kept patch
# of busy background does not; on demo validation images smoothing raised the pointing game and
# improved deletion and insertion (docs/demo.md, 'The model').


def _binomial3(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 1-D binomial kernel [1, 2, 1], made on the device from no host data: a tensor built from
    a Python list would be a host-to-device copy, which CUDA-graph capture refuses."""
    return 2 - (torch.arange(3, dtype=dtype, device=device) - 1).abs()


def survival_probability(scores: torch.Tensor) -> torch.Tensor:
    """[B, S, N] per-stage keep probabilities (0 once dropped) -> [B, N]: the probability that each
    patch survives every stage, plus HEATMAP_TIE_BREAK of their mean (the heatmap before smoothing)."""
    return (1 - HEATMAP_TIE_BREAK) * scores.prod(1) + HEATMAP_TIE_BREAK * scores.mean(1)


def heatmap_from_scores(scores: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """[B, S, N] per-stage keep probabilities (0 once dropped) -> [B, gh, gw] heatmap in [0, 1].
    Per patch: the probability that it survives every stage (the product: what the interpreters,
    trained as one Bernoulli policy, say about it), plus 1% of the mean over stages so that
    patches dropped early still rank by their scores; then smoothed over the grid with a 3x3
    binomial kernel, normalised at the border by the weight inside the grid (no pull towards
    or away from the image's edges)."""
    B, S, N = scores.shape
    gh, gw = grid
    if gh * gw != N:
        raise ValueError(f"heatmap: {N} patch scores do not fill a {gh}x{gw} grid")
    per_patch = survival_probability(scores)
    k1 = _binomial3(per_patch.dtype, per_patch.device)
    k = torch.outer(k1, k1).view(1, 1, 3, 3)
    with torch.autocast(per_patch.device.type, enabled=False):  # the scores' dtype, not a caller's autocast
        heat = F.conv2d(per_patch.view(B, 1, gh, gw), k, padding=1)
        weight = F.conv2d(torch.ones(1, 1, gh, gw, dtype=k.dtype, device=k.device), k, padding=1)
    return (heat / weight).view(B, gh, gw)


class IARedOutput:
    """What one forward gives. S = number of stages (groups), N = patch tokens, grid gh x gw = N.

    logits [B, num_classes] and log_probs [B, S] (policy "sample"; else None) are computed by the
    forward; the per-patch outputs are built on first access, from what each stage kept, so a
    forward that only needs logits launches none of their ops:
    keep_masks [B, S, N] bool (patch still present after stage s's decision), scores [B, S, N]
    float32 (stage s's keep probability, 0 if already dropped), kept_counts [B, S] int64, heatmap
    [B, gh, gw] float32 in [0, 1] (`heatmap_from_scores(scores, grid)`), flops [B] float64
    (estimated from the real token counts), keep_ratio [B, S]."""

    def __init__(
        self,
        logits: torch.Tensor,
        maps: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
        grid: Tuple[int, int],
        flops_of: Callable[[torch.Tensor], torch.Tensor],
        log_probs: Optional[torch.Tensor] = None,
    ):
        self.logits = logits
        self.log_probs = log_probs
        self._build_maps, self._grid, self._flops_of = maps, grid, flops_of

    @cached_property
    def _maps(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._build_maps()

    @property
    def keep_masks(self) -> torch.Tensor:
        return self._maps[0]

    @property
    def scores(self) -> torch.Tensor:
        return self._maps[1]

    @cached_property
    def kept_counts(self) -> torch.Tensor:
        return self.keep_masks.sum(-1)

    @cached_property
    def heatmap(self) -> torch.Tensor:
        return heatmap_from_scores(self.scores, self._grid)

    @cached_property
    def flops(self) -> torch.Tensor:
        return self._flops_of(self.kept_counts)

    @property
    def keep_ratio(self) -> torch.Tensor:
        """[B, S] fraction of patch tokens kept by each stage."""
        return self.kept_counts.float() / self.keep_masks.shape[-1]


def _check_supported(vit: nn.Module) -> None:
    if not isinstance(vit, VisionTransformer):
        raise TypeError(f"IARedViT wraps a timm VisionTransformer, got {type(vit).__name__}")
    problems = []
    if vit.cls_token is None:
        problems.append("it has no class token")
    if vit.global_pool != "token" or getattr(vit, "attn_pool", None) is not None:
        problems.append(f"it pools with {vit.global_pool!r}, not the class token")
    if getattr(vit, "dynamic_img_size", False):
        problems.append("dynamic_img_size is on")
    if vit.pos_embed is None:
        problems.append("it has no absolute position embedding")
    for i, blk in enumerate(vit.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention or getattr(blk.attn, "gate", None) is not None:
            problems.append(
                f"block {i} is {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}, "
                "not timm's plain Block/Attention"
            )
            break
    if problems:
        raise ValueError("IARedViT cannot wrap this model: " + "; ".join(problems))


def _per_stage(value: PerStage, stages: int, name: str) -> List[float]:
    values = [float(value)] * stages if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != stages:
        raise ValueError(f"{name}: expected one value or {stages} (one per stage), got {len(values)}")
    return values


def scaled_keep_targets(keep: float, current: Sequence[float]) -> List[float]:
    """The per-stage keeps `current` (non-increasing) scaled by one factor a, each capped at 1, so
    that their mean is `keep`: min(1, a * current[s])."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    cur = [float(c) for c in current]
    if not cur or max(cur) <= 0.0:
        raise ValueError(
            f"the model keeps no patch tokens at its current thresholds ({cur}): "
            "nothing to scale; use shape='geometric'"
        )
    mean = lambda a: sum(min(1.0, a * c) for c in cur) / len(cur)  # noqa: E731
    lo, hi = 0.0, 1.0 / min(c for c in cur if c > 0)  # at hi every stage with c > 0 keeps all
    if mean(hi) < keep:
        raise ValueError(
            f"keep {keep} needs stages the model drops entirely at its current "
            f"thresholds ({cur}); use shape='geometric'"
        )
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean(mid) < keep:
            lo = mid
        else:
            hi = mid
    return [min(1.0, hi * c) for c in cur]


DEMO_BACKBONES = ("iared_digits_tiny",)


def register_backbone(name: str) -> None:
    """Register the demo backbone with timm when `name` asks for it: the core never imports
    `iared_edge.demo` otherwise."""
    if name in DEMO_BACKBONES:
        from .demo import model as _demo_model  # noqa: F401  (registers with timm on import)


def check_timm_name(name: str) -> None:
    """Raise a ValueError naming `name` (and the closest timm names) unless timm knows it; names with
    a source prefix (``hf-hub:``, ``local-dir:``) are left to timm."""
    import difflib

    import timm
    from timm.models import parse_model_name

    source, arch = parse_model_name(name)
    register_backbone(arch)
    if source is not None or timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3)
    hint = f"; closest timm names: {', '.join(close)}" if close else ""
    raise ValueError(f"unknown model {name!r}: not a timm model name{hint}")


class IARedViT(nn.Module):
    """IA-RED² on a timm VisionTransformer (`self.vit`, under timm's own names): before each group
    of blocks an interpreter scores the surviving patch tokens, and the forward drops those its
    policy drops (the class token never). `IARedViT.from_timm(name, checkpoint=...)` builds one;
    `forward(images, policy=...)` gives an `IARedOutput` (logits, heatmap, keep masks, FLOPs)."""

    def __init__(
        self,
        vit: VisionTransformer,
        groups: Sequence[int] = (4, 4, 4),
        thresholds: PerStage = 0.5,
        labels: Optional[Sequence[str]] = None,
        timm_name: Optional[str] = None,
        timm_kwargs: Optional[Dict[str, Any]] = None,
        init_interpreters: bool = True,
        keep_profile: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        _check_supported(vit)
        groups = tuple(int(g) for g in groups)
        if any(g <= 0 for g in groups) or sum(groups) != len(vit.blocks):
            raise ValueError(f"groups {groups} must be positive and sum to the model's {len(vit.blocks)} blocks")
        self.vit = vit
        self.groups = groups
        dim, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
        self.interpreters = nn.ModuleList(Interpreter(dim, heads) for _ in groups)
        self.thresholds = _per_stage(thresholds, len(groups), "thresholds")
        if labels is not None and len(labels) != vit.num_classes:
            raise ValueError(f"labels: {len(labels)} given for {vit.num_classes} classes")
        self.labels = list(labels) if labels is not None else None
        self.keep_profile = keep_profile
        self.timm_name = timm_name
        self.timm_kwargs = dict(timm_kwargs or {})
        if init_interpreters:
            self.init_interpreters_from_attention()

    @classmethod
    def from_timm(
        cls,
        name: str,
        pretrained: bool = False,
        checkpoint: Optional[str] = None,
        groups: Sequence[int] = (4, 4, 4),
        thresholds: PerStage = 0.5,
        labels: Optional[Sequence[str]] = None,
        **timm_kwargs: Any,
    ) -> IARedViT:
        """Build from a timm model name. `checkpoint`: a timm/DeiT state dict (.pth/.pt loaded with
        weights_only=True, or .safetensors) for the backbone. `pretrained=True` downloads (online only)."""
        import timm

        from .checkpoint import load_backbone_state_dict

        check_timm_name(name)
        vit = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
        if checkpoint is not None:
            load_backbone_state_dict(vit, checkpoint)
        kwargs = dict(timm_kwargs, num_classes=vit.num_classes)
        return cls(vit, groups=groups, thresholds=thresholds, labels=labels, timm_name=name, timm_kwargs=kwargs)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def num_prefix(self) -> int:
        """Class token plus distillation/register tokens: never dropped."""
        return self.vit.num_prefix_tokens

    @property
    def grid_size(self) -> Tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.vit.patch_embed.num_patches

    @property
    def num_stages(self) -> int:
        return len(self.groups)

    @property
    def input_size(self) -> Tuple[int, int, int]:
        return (self.vit.patch_embed.proj.in_channels, *self.vit.patch_embed.img_size)

    def class_names(self) -> List[str]:
        """The model's labels; ImageNet's class names for a 1000-class model without labels; else
        the class indices as strings."""
        n = self.vit.num_classes
        if self.labels is not None:
            return list(self.labels)
        if n == 1000:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            return [info.index_to_description(i) for i in range(n)]
        return [str(i) for i in range(n)]

    def stage_blocks(self, stage: int) -> List[nn.Module]:
        """The blocks of group `stage` (a list: slicing the ModuleList would build a new one per
        call, a visible cost at batch 1)."""
        start = sum(self.groups[:stage])
        return list(self.vit.blocks)[start : start + self.groups[stage]]

    @torch.no_grad()
    def init_interpreters_from_attention(self) -> None:
        """Training-free start: each interpreter becomes the first block of its group's class-token
        attention logits through a sigmoid (norm1 affine and q/k of qkv folded in)."""
        for s, interp in enumerate(self.interpreters):
            blk = self.stage_blocks(s)[0]
            interp.init_from_attention(blk.norm1, blk.attn.qkv)

    # -- forward -------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
        c, h, w = self.input_size
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W] (rank 4), got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images: empty batch (B = 0)")
        if images.shape[1] != c:
            raise ValueError(f"images: expected {c} channels, got {images.shape[1]} (shape {tuple(images.shape)})")
        if tuple(images.shape[2:]) != (h, w):
            raise ValueError(f"images: expected {h}x{w} pixels, got {images.shape[2]}x{images.shape[3]}")
        if not images.is_floating_point():
            raise ValueError(f"images: expected a floating dtype (normalised pixels), got {images.dtype}")

    def _check_finite(self, images: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> None:
        """Refuse NaN/Inf pixels. A host read (on a GPU, a sync): skipped where no data can be read
        (fake tensors, tracing, CUDA-graph capture). One cheap reduction first, the exact check only
        if it trips: over `tokens`, the embedded images, when given (they were just written, so
        they are in cache where the pixels may not be); a NaN or Inf pixel makes its patch's
        tokens non-finite only through a stem that is one convolution (no ReLU to clip an -Inf)."""
        if type(images) is not torch.Tensor or torch.jit.is_tracing() or _capturing(images):
            return
        if not math.isfinite((images if tokens is None else tokens).sum()) and not torch.isfinite(images).all():
            raise ValueError("images: contains NaN or Inf")

    def _stem_propagates_nonfinite(self) -> bool:
        """Whether any NaN/Inf pixel surely reaches the embedded tokens: timm's patch embedding as one
        convolution whose patches tile the whole image (every output channel of a patch sums
        weight x pixel; Inf x 0 is NaN), no patch dropout at work, then the position embedding's
        add."""
        vit = self.vit
        pe = vit.patch_embed
        if type(pe) is not PatchEmbed or type(pe.proj) is not nn.Conv2d:
            return False
        if not isinstance(pe.norm, (nn.Identity, nn.LayerNorm)):
            return False
        stride, kernel, padding = tuple(pe.proj.stride), tuple(pe.proj.kernel_size), pe.proj.padding
        tiles = (
            stride == kernel and padding in ((0, 0), "valid") and all(n % k == 0 for n, k in zip(pe.img_size, kernel))
        )
        return tiles and (isinstance(vit.patch_drop, nn.Identity) or not vit.patch_drop.training)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.patch_embed(images.to(vit.pos_embed.dtype))
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))

    def _head(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix tokens [B, P, C] -> logits, through timm's own norm and head."""
        return self.vit.forward_head(self.vit.norm(prefix))

    def forward(
        self,
        images: torch.Tensor,
        policy: Union[str, Sequence[str]] = "threshold",
        execution: str = "packed",
        thresholds: Optional[PerStage] = None,
        level: Optional[PerStage] = None,
        decisions: Optional[Sequence[torch.Tensor]] = None,
        check_finite: bool = True,
    ) -> IARedOutput:
        """Run the network.

        policy: "all" (drop nothing), "threshold" (keep p > t; `thresholds` per stage, default the
        model's), "level" (keep the top ceil(l * n) surviving patches at each stage: `level` one
        keep level, spread over the stages by `stage_levels`, or one l per stage), "sample"
        (Bernoulli(p) decisions with log-probabilities, for REINFORCE), "given" (`decisions`: per
        stage a [B, N] bool tensor in patch-grid order; a token dropped earlier stays dropped).
        One policy, or one per stage (a curriculum trains stage 1 with ("sample", "all", "all")).
        execution: "packed" (inference) or "masked" (training). "packed" runs without autograd
        (the compiled ops have no backward, so a gradient through them would be silently
        partial): its outputs never require grad, and it keeps no activations even when the
        caller forgot torch.no_grad(). Gradients need "masked". check_finite: refuse NaN/Inf
        pixels (a host read; False where the input is known finite).
        """
        S = self.num_stages
        policies = [policy] * S if isinstance(policy, str) else list(policy)
        if "ratio" in policies:
            raise ValueError('policy "ratio" is now called "level" (with level= for the keep level)')
        if len(policies) != S or not all(p in POLICIES for p in policies):
            raise ValueError(f"policy must be one of {POLICIES}, or one of them per stage ({S}), got {policy!r}")
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        self._check_images(images)
        # the finite check on the embedded tokens where that is exact (see _check_finite)
        late = check_finite and self._stem_propagates_nonfinite()
        if check_finite and not late:
            self._check_finite(images)
        B = images.shape[0]
        params: List[Optional[float]] = [None] * S
        if "threshold" in policies:
            t = _per_stage(self.thresholds if thresholds is None else thresholds, S, "thresholds")
            params = [t[s] if p == "threshold" else params[s] for s, p in enumerate(policies)]
        if "level" in policies:
            if level is None:
                raise ValueError('policy "level" needs level= (one value or one per stage)')
            # one keep level: the per-stage levels it means for this model (its keep profile, if any)
            r = (
                self.stage_levels(level)
                if isinstance(level, (int, float)) and not isinstance(level, bool)
                else _per_stage(level, S, "level")
            )
            if not all(0.0 <= v <= 1.0 for v in r):
                raise ValueError(f"level must be in [0, 1], got {r}")
            params = [r[s] if p == "level" else params[s] for s, p in enumerate(policies)]
        if "given" in policies:
            if decisions is None or len(decisions) != S:
                raise ValueError(f'policy "given" needs decisions: {S} bool tensors [B, N] (None for other stages)')
            for s, d in enumerate(decisions):
                if policies[s] == "given" and (d is None or d.shape != (B, self.num_patches) or d.dtype != torch.bool):
                    raise ValueError(
                        f"decisions must be bool [B={B}, N={self.num_patches}], got "
                        f"{getattr(d, 'dtype', None)} {tuple(getattr(d, 'shape', ()))}"
                    )
        elif decisions is not None:
            raise ValueError(f'decisions are only used with policy "given", not {policy!r}')
        packed = execution == "packed"
        with torch.no_grad() if packed else nullcontext():
            x = self._embed(images)
            if late:
                self._check_finite(images, x.detach())
            return (self._forward_packed if packed else self._forward_masked)(x, policies, params, decisions)

    def _finish(self, logits, keep_masks, scores, log_probs) -> IARedOutput:
        masks, probs = torch.stack(keep_masks, 1), torch.stack(scores, 1)
        return IARedOutput(
            logits,
            lambda: (masks, probs),
            self.grid_size,
            self.flops,
            torch.stack(log_probs, 1) if log_probs is not None else None,
        )

    def _forward_masked(self, x, policies, params, decisions) -> IARedOutput:
        B, L, _ = x.shape
        P = self.num_prefix
        alive = torch.ones(B, L, dtype=torch.bool, device=x.device)
        keep_masks, scores, log_probs = [], [], ([] if "sample" in policies else None)
        for s, interp in enumerate(self.interpreters):
            policy = policies[s]
            probs = interp(x).float()
            cand = alive.clone()
            cand[:, :P] = False
            if policy == "all":
                keep = cand
            elif policy == "threshold":
                keep = cand & (probs > params[s])
            elif policy == "level":
                keep = _topk_dense(probs, cand, params[s])
            elif policy == "given":
                keep = cand.clone()
                keep[:, P:] &= decisions[s].to(x.device)
            else:  # sample
                keep = cand & torch.bernoulli(probs.detach()).bool()
                lp = _bernoulli_log_prob(keep, probs)
                log_probs.append((lp * cand).sum(1))
            if log_probs is not None and policy != "sample":
                log_probs.append(torch.zeros(B, device=x.device))
            scores.append(torch.where(cand, probs, 0.0)[:, P:])
            keep_masks.append(keep[:, P:])
            alive = keep.clone()
            alive[:, :P] = True
            mask = alive[:, None, None, :]
            for blk in self.stage_blocks(s):
                x = blk(x, attn_mask=mask)
        return self._finish(self._head(x[:, :P]), keep_masks, scores, log_probs)

    def _forward_packed(self, x, policies, params, decisions) -> IARedOutput:
        B, L, C = x.shape
        P = self.num_prefix
        pk = Packed.from_dense(x)
        n: Optional[int] = L  # tokens per image while every image has as many (None once they differ)
        h = x  # the tokens as [B, n, C] while n is known
        seqs, lengths = None, None  # once n is None: the images' rows for attention, and their lengths if read
        records = []  # per stage: (scored, kept): what the lazy per-patch outputs are built from
        log_probs = [] if "sample" in policies else None
        for s, interp in enumerate(self.interpreters):
            policy = policies[s]
            keep_all = policy == "all" or (policy == "level" and params[s] >= 1.0)
            if keep_all:  # no decision to take: the scores wait until an output needs them
                # the tokens and weights of now (pk.tokens moves on below; a caller's weights may change)
                now, weights = Packed(pk.tokens, pk.offsets, pk.positions), (interp.qk.weight, interp.qk.bias)
                scored = (
                    pk.offsets,
                    pk.positions,
                    lambda now=now, i=interp, w=weights: self._score(now, i, w=w),
                )
            else:
                if policy in ("level", "threshold"):  # fold, score, keep, compact: one call on a CPU
                    level, threshold = (params[s], None) if policy == "level" else (None, params[s])
                    probs, *kept = ops.select_stage(
                        pk.tokens,
                        pk.offsets,
                        pk.positions,
                        interp.fold_weights(),
                        interp.num_heads,
                        interp.norm.eps,
                        level=level,
                        threshold=threshold,
                        num_prefix=P,
                        cls=h[:, 0] if n is not None else None,
                    )
                else:  # "given", "sample"
                    probs = self._score(pk, interp, h[:, 0] if n is not None else None)
                    seq = ops.sequence_ids(pk.offsets, pk.tokens.shape[0])
                    patch = pk.positions >= P
                    if policy == "given":
                        keep = ~patch
                        keep[patch] = decisions[s].to(x.device)[seq[patch], pk.positions[patch].long() - P]
                    else:
                        keep = torch.bernoulli(probs.detach()).bool() | ~patch
                        lp = _bernoulli_log_prob(keep, probs)
                        log_probs.append(torch.zeros(B, device=x.device).index_add_(0, seq[patch], lp[patch]))
                    kept = ops.compact(pk.tokens, pk.offsets, pk.positions, keep, P)
                scored = (pk.offsets, pk.positions, probs)
                pk = Packed(*kept)
                n, lengths = self._common_length(pk, B, n, policy, params[s])
                h = pk.tokens.view(B, n, C) if n is not None else None
                seqs = None  # new rows: where each image's are, worked out once, when needed
            if log_probs is not None and policy != "sample":
                log_probs.append(torch.zeros(B, device=x.device))
            records.append((scored, (pk.offsets, pk.positions)))
            if n is not None:  # every image as long: timm's own blocks on [B, n, C], nothing added
                for blk in self.stage_blocks(s):
                    h = blk(h)
                pk.tokens = h.reshape(B * n, C)
            else:
                if seqs is None:  # L bounds every image's length: nothing read back on a GPU
                    seqs = Sequences(pk.offsets, L, lengths) if lengths is not None else pk.sequences(max_len=L)
                for blk in self.stage_blocks(s):
                    pk.tokens = packed_block(blk, pk.tokens, seqs)
        if n is not None:
            prefix = h[:, :P]
        else:
            prefix = pk.tokens[pk.offsets[:-1].long()[:, None] + torch.arange(P, device=x.device)]
        return IARedOutput(
            self._head(prefix),
            lambda: self._packed_maps(records, B, L),
            self.grid_size,
            self.flops,
            torch.stack(log_probs, 1) if log_probs is not None else None,
        )

    def _score(self, pk: Packed, interp, cls: Optional[torch.Tensor] = None, w=None) -> torch.Tensor:
        """Stage scores of the packed tokens (keep probability [T]); `cls`: the class tokens [B, C]
        when at hand, else found by the offsets; `w`: the interpreter's (weight, bias) to score
        with, when not its current ones."""
        if cls is None:
            cls = pk.tokens[pk.offsets[:-1].long()]
        vecs, biases = interp.fold(cls, w)
        probs, _ = ops.interpreter_scores(
            pk.tokens, pk.offsets, vecs, biases, None, pk.positions, self.num_prefix, interp.norm.eps
        )
        return probs

    def _common_length(
        self, pk: Packed, B: int, n: Optional[int], policy: str, level: Optional[float]
    ) -> Tuple[Optional[int], Optional[List[int]]]:
        """(tokens per image after a compaction if every image has as many, else None; the lengths
        when they were read). Read on the host where it is free (a CPU, one image) or known (policy
        "level" keeps the same count of equally long images), never read back from a GPU."""
        T = pk.tokens.shape[0]
        if B == 1:
            return T, None
        if policy == "level" and n is not None:
            m = self.num_prefix + ops.level_keep_count(n - self.num_prefix, level)
            torch._check(T == B * m)  # known, not read: tells a trace the packed size
            return m, None
        if pk.tokens.is_cuda:
            return None, None
        lengths = pk.lengths()
        return (lengths[0] if len(set(lengths)) == 1 else None), lengths

    def _packed_maps(self, records, B: int, L: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keep_masks, scores) [B, S, N] from what each stage scored and kept: each row's cell in
        a [B, L] map, filled by one scatter (no boolean indexing: on a GPU each would sync)."""
        P = self.num_prefix
        masks, scores = [], []
        for (offsets, positions, probs), (kept_offsets, kept_positions) in records:
            probs = probs() if callable(probs) else probs
            cell = ops.sequence_ids(offsets, positions.shape[0]) * L + positions.long()
            scores.append(torch.zeros(B * L, device=probs.device).index_put((cell,), probs.float()).view(B, L)[:, P:])
            cell = ops.sequence_ids(kept_offsets, kept_positions.shape[0]) * L + kept_positions.long()
            kept = torch.zeros(B * L, dtype=torch.bool, device=probs.device).index_fill_(0, cell, True)
            masks.append(kept.view(B, L)[:, P:])
        return torch.stack(masks, 1), torch.stack(scores, 1)

    # -- cost ----------------------------------------------------------------------------------
    def flops(self, kept_counts: Optional[torch.Tensor] = None, interpreters: bool = True) -> torch.Tensor:
        """Estimated FLOPs per image (multiply-add = 2) from patch tokens kept per stage [B, S];
        None = the plain backbone with every token (no interpreters). Counts patch embedding, every
        block's qkv, attention (quadratic term), projection and MLP, the interpreters, the head."""
        vit, P, N = self.vit, self.num_prefix, self.num_patches
        C = vit.embed_dim
        hidden = vit.blocks[0].mlp.fc1.out_features
        in_ch, ph, pw = self.input_size[0], *vit.patch_embed.patch_size
        proj = vit.patch_embed.proj
        if kept_counts is None:
            kept_counts = torch.full((1, self.num_stages), N)
            interpreters = False
        n_in = torch.cat([torch.full_like(kept_counts[:, :1], N), kept_counts[:, :-1]], 1).double() + P
        n = kept_counts.double() + P
        block = 2 * n * C * 3 * C + 4 * n * n * C + 2 * n * C * C + 4 * n * C * hidden
        total = sum(block[:, s] * g for s, g in enumerate(self.groups))  # no tensor from host data
        # A plain patch projection, or a convolutional stem that counts its own cost (a walk over
        # its modules: counted once per stem and input size, since every forward reports FLOPs)
        if hasattr(proj, "flops"):
            key = (id(proj), tuple(self.input_size[1:]))
            if getattr(self, "_stem_flops", (None,))[0] != key:
                self._stem_flops = (key, proj.flops(*self.input_size[1:]))
            embed = self._stem_flops[1]
        else:
            embed = 2 * N * C * in_ch * ph * pw
        total += embed + 2 * C * vit.num_classes * (2 if P > 1 and hasattr(vit, "head_dist") else 1)
        if interpreters:  # class-token query 2C², folding 2C², then 2·C·H per token
            heads = self.interpreters[0].num_heads
            total += (4 * C * C + 2 * n_in * C * heads).sum(1)
        return total

    @property
    def keep_profile(self) -> Optional[List[float]]:
        """Share of patch tokens kept after each stage at the thresholds, on typical images (set by
        `calibrate_thresholds` / `measure_keep_profile`), or None. Keep levels follow it."""
        return self._keep_profile

    @keep_profile.setter
    def keep_profile(self, profile: Optional[Sequence[float]]) -> None:
        if profile is not None:
            profile = [float(p) for p in profile]
            if (
                len(profile) != self.num_stages
                or not all(0.0 < p <= 1.0 for p in profile)
                or any(b > a + 1e-9 for a, b in zip(profile, profile[1:]))
            ):
                raise ValueError(
                    f"keep_profile: one share in (0, 1] per stage ({self.num_stages}), "
                    f"non-increasing (a dropped token stays dropped), got {profile}"
                )
        self._keep_profile = profile

    def stage_levels(self, level: float) -> List[float]:
        """The per-stage levels that keep level `level` means for this model (policy "level", the
        Runtime's budget levels, the exported graphs). Without a keep_profile: `level` at every
        stage (level, level², ... of the patch tokens kept after each stage). With one: the profile
        scaled so that the mean share kept over the stages, hence roughly the cost, is that of the
        uniform level, while the stages keep the allocation the interpreters learned (e.g. stage 2
        keeping all that stage 1 kept)."""
        level = float(level)
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"keep level must be in [0, 1], got {level}")
        S = self.num_stages
        if self._keep_profile is None or level == 0.0:  # 0: the fewest tokens policy "level" keeps
            return [level] * S
        # solved once per level and profile (a bisection in Python: per forward it would cost more
        # than a stage's scoring at batch 1)
        key = (level, tuple(self._keep_profile))
        cache = self.__dict__.setdefault("_stage_levels", {})
        if key not in cache:
            cum = scaled_keep_targets(sum(level ** (s + 1) for s in range(S)) / S, self._keep_profile)
            cache[key] = [min(1.0, c / p) for c, p in zip(cum, [1.0] + cum[:-1])]
        return list(cache[key])

    def config(self) -> Dict[str, Any]:
        """What `save_model` stores beside the weights to rebuild this model."""
        return {
            "timm_name": self.timm_name,
            "timm_kwargs": self.timm_kwargs,
            "groups": list(self.groups),
            "thresholds": self.thresholds,
            "labels": self.labels,
            "keep_profile": self.keep_profile,
        }


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _bernoulli_log_prob(keep: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Per-token log-probability of the decisions `keep` under Bernoulli(probs)."""
    return torch.where(keep, probs.clamp_min(1e-8).log(), (1 - probs).clamp_min(1e-8).log())


def _topk_dense(probs: torch.Tensor, cand: torch.Tensor, level: float) -> torch.Tensor:
    """Dense form of `ops.topk_keep`: per row the top ceil(level * n) candidates, earlier wins ties."""
    n = cand.sum(1)
    # ops.level_keep_count on the device, in float64 as there (no host read: n stays where it is)
    k = torch.minimum(n, torch.ceil(n.double() * level - 1e-6).clamp_min(0).long())
    masked = torch.where(cand, probs, -math.inf)
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=probs.device).expand_as(order))
    return cand & (rank < k[:, None])
