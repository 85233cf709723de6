"""Images in (files, RGB arrays), normalised tensors out; heatmaps back onto images."""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def find_images(folder: str) -> List[str]:
    """The images under `folder` (searched recursively), sorted."""
    found = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not found:
        raise ValueError(f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} images found")
    return found


def load_rgb(path: str) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc


def to_tensor(
    rgb: np.ndarray, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875
) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> [1, 3, h, w] float32: resize the short side to size / crop_pct,
    centre crop, normalise (timm's eval transform)."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"expected an H x W x 3 uint8 image, got "
            f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}"
        )
    if min(rgb.shape[:2]) < 2:
        raise ValueError(f"image too small: {rgb.shape[1]}x{rgb.shape[0]} pixels")
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[2:]
    scale = max(size[0], size[1]) / crop_pct / min(h, w)
    x = F.interpolate(
        x,
        size=(max(size[0], round(h * scale)), max(size[1], round(w * scale))),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    top, left = (x.shape[2] - size[0]) // 2, (x.shape[3] - size[1]) // 2
    x = x[:, :, top : top + size[0], left : left + size[1]]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def model_normalization(model) -> Tuple[Tuple[float, ...], Tuple[float, ...], float]:
    """(mean, std, crop_pct) of a model's eval transform, from its timm config (ImageNet's when absent)."""
    cfg = model.vit.pretrained_cfg or {}
    return (
        tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        float(cfg.get("crop_pct", 0.875)),
    )


def model_input(model, rgb: np.ndarray) -> torch.Tensor:
    """An RGB image as the model's [1, 3, h, w] input (timm's eval transform, centre crop)."""
    mean, std, crop_pct = model_normalization(model)
    return to_tensor(rgb, model.input_size[1:], mean, std, crop_pct)


def colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 RGB, a blue-cyan-yellow-red ramp (no plotting library needed)."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 0.5], [0, 0.6, 1], [1, 1, 0], [1, 0, 0]])
    pos = v * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    t = pos - i
    rgb = stops[i[..., 0]] * (1 - t) + stops[i[..., 0] + 1] * t
    return (rgb * 255).astype(np.uint8)


def overlay(
    rgb: np.ndarray, heatmap: np.ndarray, kept: np.ndarray | None = None, alpha: float = 0.5, dropped: float = 0.5
) -> np.ndarray:
    """Blend a patch-grid heatmap [gh, gw] in [0, 1] over an RGB image so that the image shows
    through: each pixel takes `alpha * heat` of the colour ramp (cold patches stay as they are, hot
    ones are tinted, never covered). Patches not kept (`kept` [gh, gw] bool) are marked lightly:
    drained of `dropped` of their colour, not darkened, so what they show stays legible."""
    h, w = rgb.shape[:2]
    hm = (
        F.interpolate(
            torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))[None, None],
            size=(h, w),
            mode="bilinear",
            align_corners=False,
        )[0, 0]
        .numpy()
        .clip(0, 1)
    )
    img = rgb.astype(np.float32)
    if kept is not None:
        k = F.interpolate(torch.from_numpy(kept.astype(np.float32))[None, None], size=(h, w), mode="nearest")[
            0, 0
        ].numpy()[..., None]
        grey = img.mean(-1, keepdims=True)
        img = img * (1 - dropped * (1 - k)) + grey * (dropped * (1 - k))
    a = (alpha * hm)[..., None]
    out = img * (1 - a) + colormap(hm).astype(np.float32) * a
    return out.clip(0, 255).astype(np.uint8)


# -- camera frames onto the model's input, and back ------------------------------------------------
FITS = ("squash", "crop", "letterbox")


def fit_boxes(frame_hw: Tuple[int, int], input_hw: Tuple[int, int], fit: str = "squash"):
    """How a frame of size (h, w) becomes a model input of size (H, W): (frame box, input box), each
    (x0, y0, x1, y1) in pixels: the part of the frame the model sees and where it lands in the input.
    "squash": the whole frame onto the whole input (its aspect ratio changes); "crop": the largest
    centred part of the frame with the input's aspect ratio; "letterbox": the whole frame, its aspect
    ratio kept, centred in the input, the rest padded."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    (h, w), (H, W) = frame_hw, input_hw
    if fit == "crop":
        s = max(W / w, H / h)
        cw, ch = min(w, max(1, round(W / s))), min(h, max(1, round(H / s)))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        return (x0, y0, x0 + cw, y0 + ch), (0, 0, W, H)
    if fit == "letterbox":
        s = min(W / w, H / h)
        rw, rh = min(W, max(1, round(w * s))), min(H, max(1, round(h * s)))
        x0, y0 = (W - rw) // 2, (H - rh) // 2
        return (0, 0, w, h), (x0, y0, x0 + rw, y0 + rh)
    return (0, 0, w, h), (0, 0, W, H)


def fit_frame(rgb: np.ndarray, input_hw: Tuple[int, int], fit: str = "squash", pad=(0, 0, 0)) -> np.ndarray:
    """An H x W x 3 uint8 frame as the model's H x W x 3 uint8 input, placed by `fit_boxes`;
    `pad` fills what the frame does not cover (letterbox)."""
    import cv2

    (fx0, fy0, fx1, fy1), (ix0, iy0, ix1, iy1) = fit_boxes(rgb.shape[:2], input_hw, fit)
    part = cv2.resize(np.ascontiguousarray(rgb[fy0:fy1, fx0:fx1]), (ix1 - ix0, iy1 - iy0), interpolation=cv2.INTER_AREA)
    if (ix0, iy0, ix1, iy1) == (0, 0, input_hw[1], input_hw[0]):
        return part
    canvas = np.empty((*input_hw, 3), np.uint8)
    canvas[:] = np.asarray(pad, np.uint8)
    canvas[iy0:iy1, ix0:ix1] = part
    return canvas


def grid_to_frame(
    grid: np.ndarray, frame_hw: Tuple[int, int], input_hw: Tuple[int, int], fit: str = "squash", nearest: bool = False
) -> np.ndarray:
    """A patch-grid map [gh, gw] (heatmap, kept mask) back onto the frame it answers: h x w float32,
    0 where the model did not see the frame (outside the crop)."""
    import cv2

    (h, w), (H, W) = frame_hw, input_hw
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    grid = np.ascontiguousarray(grid, dtype=np.float32)
    (fx0, fy0, fx1, fy1), (ix0, iy0, ix1, iy1) = fit_boxes(frame_hw, input_hw, fit)
    if (ix0, iy0, ix1, iy1) != (0, 0, W, H):  # letterbox: the frame is part of the input
        grid = cv2.resize(grid, (W, H), interpolation=interp)[iy0:iy1, ix0:ix1]
    if (fx0, fy0, fx1, fy1) == (0, 0, w, h):
        return cv2.resize(grid, (w, h), interpolation=interp)
    out = np.zeros((h, w), np.float32)
    out[fy0:fy1, fx0:fx1] = cv2.resize(grid, (fx1 - fx0, fy1 - fy0), interpolation=interp)
    return out
