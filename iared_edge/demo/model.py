"""The demo model's backbone, registered with timm as `iared_digits_tiny`.

DeiT-Tiny (192 wide, 12 blocks, 3 heads; class token + 16x16 patch tokens) with two changes that
help a ViT learn from little data on a CPU: a small convolutional stem as the patch embedding
(four stride-2 3x3 convolutions, still one token per 16x16 patch) and 10 classes. Importing
`iared_edge.demo` registers it (`load_model`, `IARedViT.from_timm` and `Runtime("demo")` do that on
first use), so `timm.create_model("iared_digits_tiny")` finds it.

`stem_blocks=n` adds n residual bottleneck blocks to the stem at 1/8 resolution (96 channels),
`stem_fine_blocks=n` n more at 1/4 resolution (48 channels), all zero-initialised so that weights
trained without them load and compute the same function: more local capacity to tell pen strokes
from busy backgrounds, at about 47 MFLOP a block either way, and 31 K parameters at 1/8 against
7.5 K at 1/4 (the shipped file's size limit leaves room for the small ones).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

EMBED_DIM, NUM_HEADS = 192, 3  # DeiT-Tiny's token width and heads (64 per head)


class StemBlock(nn.Module):
    """Residual bottleneck: 1x1 to half width, 3x3, 1x1 back, each conv-BN (ReLU between), added to
    the input. The last BN starts at zero scale, so a new block is the identity."""

    def __init__(self, channels: int):
        super().__init__()
        mid = channels // 2
        self.body = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 1, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


CHANNELS_LAST_ON_CPU = True  # see ConvStem.forward; a switch for benchmarks/bench_stem_layout.py
FINE_AFTER = 2  # `fine_blocks` run after this many stride-2 conv-BN-ReLUs: 1/4 resolution


class ConvStem(nn.Sequential):
    """3x3 stride-2 conv-BN-ReLU x3, then a 3x3 stride-2 conv to the embedding: a 16x16 patch per
    token. `blocks` residual `StemBlock`s run before that last conv (1/8 resolution) and
    `fine_blocks` after the second conv-BN-ReLU (1/4 resolution); they live under `.blocks` and
    `.fine_blocks`, so the other layers keep their state-dict names (0..9) with or without them."""

    def __init__(self, in_chans: int, embed_dim: int, widths=(24, 48, 96), blocks: int = 0, fine_blocks: int = 0):
        layers, c = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, embed_dim, 3, 2, 1))
        super().__init__(*layers)
        self.in_channels = in_chans
        self._layers = len(layers)
        if blocks:
            self.blocks = nn.Sequential(*(StemBlock(c) for _ in range(blocks)))
        if fine_blocks:
            self.fine_blocks = nn.Sequential(*(StemBlock(widths[FINE_AFTER - 1]) for _ in range(fine_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not self.training and CHANNELS_LAST_ON_CPU and not torch.jit.is_tracing():
            # oneDNN's CPU convolutions skip a layout conversion per conv on channels-last input:
            # faster in inference, no gain in a bf16 training step, so training keeps NCHW
            # (docs/benchmarks.md, "The demo model's convolutional stem on channels-last input"). The
            # output's layout is then already the tokens' (B, H*W, C): flattening copies nothing
            x = x.contiguous(memory_format=torch.channels_last)
        layers = list(self.children())[: self._layers]
        for i, m in enumerate(layers[:-1]):
            x = m(x)
            if i == 3 * FINE_AFTER - 1 and hasattr(self, "fine_blocks"):  # after that conv-BN-ReLU
                x = self.fine_blocks(x)
        if hasattr(self, "blocks"):
            x = self.blocks(x)
        return layers[-1](x)

    def flops(self, height: int, width: int) -> float:
        """Multiply-adds x 2 for one image."""
        total, h, w = 0.0, height, width
        convs = [m for m in list(self.children())[: self._layers] if isinstance(m, nn.Conv2d)]
        for i, m in enumerate(convs):
            name = "blocks" if i == len(convs) - 1 else "fine_blocks" if i == FINE_AFTER else None
            if name and hasattr(self, name):  # at that conv's input resolution
                total += sum(
                    2.0 * h * w * c.out_channels * c.in_channels * c.kernel_size[0] * c.kernel_size[1]
                    for c in getattr(self, name).modules()
                    if isinstance(c, nn.Conv2d)
                )
            h, w = (h + 1) // 2, (w + 1) // 2
            total += 2.0 * h * w * m.out_channels * m.in_channels * 9
        return total


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed (same grid, same attributes) with `ConvStem` as its projection."""

    def __init__(self, *args, stem_blocks: int = 0, stem_fine_blocks: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if tuple(self.patch_size) != (16, 16):
            raise ValueError(f"ConvStemPatchEmbed downsamples by 16; patch_size {self.patch_size} given")
        self.proj = ConvStem(
            self.proj.in_channels, self.proj.out_channels, blocks=stem_blocks, fine_blocks=stem_fine_blocks
        )


@register_model
def iared_digits_tiny(
    pretrained: bool = False, stem_blocks: int = 0, stem_fine_blocks: int = 0, **kwargs
) -> VisionTransformer:
    if pretrained:
        raise ValueError(
            "iared_digits_tiny has no downloadable weights: load the bundled demo model "
            "with iared_edge.load_model('demo')"
        )
    for name, n in (("stem_blocks", stem_blocks), ("stem_fine_blocks", stem_fine_blocks)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"iared_digits_tiny: {name} must be an int >= 0, got {n!r}")
    args = dict(
        img_size=224,
        patch_size=16,
        embed_dim=EMBED_DIM,
        depth=12,
        num_heads=NUM_HEADS,
        num_classes=10,
        embed_layer=partial(ConvStemPatchEmbed, stem_blocks=stem_blocks, stem_fine_blocks=stem_fine_blocks)
        if stem_blocks or stem_fine_blocks
        else ConvStemPatchEmbed,
    )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
        kwargs.pop(key, None)
    args.update(kwargs)
    model = VisionTransformer(**args)
    # The eval transform the demo model is trained with: whole frame (no crop margin), [-1, 1].
    model.pretrained_cfg = dict(
        architecture="iared_digits_tiny",
        input_size=(3, *model.patch_embed.img_size),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_pct=1.0,
        num_classes=args["num_classes"],
    )
    return model
