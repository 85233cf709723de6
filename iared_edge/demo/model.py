"""The demo model's backbone, registered with timm as `iared_digits_tiny`.

DeiT-Tiny (192 wide, 12 blocks, 3 heads; class token + 16x16 patch tokens) with two changes that
help a ViT learn from little data on a CPU: a small convolutional stem as the patch embedding
(four stride-2 3x3 convolutions, still one token per 16x16 patch) and 10 classes. Importing
`iared_edge` registers it, so `timm.create_model("iared_digits_tiny")` and `load_model` find it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer


class ConvStem(nn.Sequential):
    """3x3 stride-2 conv-BN-ReLU x3, then a 3x3 stride-2 conv to the embedding: a 16x16 patch per token."""

    def __init__(self, in_chans: int, embed_dim: int, widths=(24, 48, 96)):
        layers, c = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, embed_dim, 3, 2, 1))
        super().__init__(*layers)
        self.in_channels = in_chans

    def flops(self, height: int, width: int) -> float:
        """Multiply-adds x 2 for one image."""
        total, h, w = 0.0, height, width
        for m in self:
            if isinstance(m, nn.Conv2d):
                h, w = (h + 1) // 2, (w + 1) // 2
                total += 2.0 * h * w * m.out_channels * m.in_channels * 9
        return total


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed (same grid, same attributes) with `ConvStem` as its projection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if tuple(self.patch_size) != (16, 16):
            raise ValueError(f"ConvStemPatchEmbed downsamples by 16; patch_size {self.patch_size} given")
        self.proj = ConvStem(self.proj.in_channels, self.proj.out_channels)


@register_model
def iared_digits_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    if pretrained:
        raise ValueError("iared_digits_tiny has no downloadable weights: load the bundled demo model "
                         "with iared_edge.load_model('demo')")
    args = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=10,
                embed_layer=ConvStemPatchEmbed)
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
        kwargs.pop(key, None)
    args.update(kwargs)
    model = VisionTransformer(**args)
    # The eval transform the demo model is trained with: whole frame (no crop margin), [-1, 1].
    model.pretrained_cfg = dict(architecture="iared_digits_tiny", input_size=(3, *model.patch_embed.img_size),
                                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, num_classes=args["num_classes"])
    return model
