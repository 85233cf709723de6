"""Digits in clutter: the demo task.

Real handwritten digits (OpenCV's 5,000-digit sheet) composited onto real photos at random scale,
rotation, position, colour and contrast, so that most 16x16 patches of a 224x224 image are
background — the redundancy IA-RED² removes — with the digit's exact box known for every image.

Digits and backgrounds are split between train / val / test (columns of the digit sheet, whole
photos), so test images show writing and scenes the model never saw. Every image is a pure
function of (split, index, clutter, seed): the generator is deterministic and training can draw
fresh images forever without storing them. The train split's photos are also re-coloured at
random (channel order, hue, grey, inversion, a second photo blended in, gamma), because 34 photos
are too few for a model to generalise from to scenes it never saw; val and test photos are shown
as they are.

    from iared_edge.demo.digits import DigitsInClutter
    gen = DigitsInClutter("train")
    image_rgb, label, box = gen.sample(7)          # box = (x0, y0, x1, y1), pixels, exclusive
    write_dataset("data/digits", sizes={"train": 5000, "val": 500, "test": 1000})
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")
SPLITS = ("train", "val", "test")
CLASSES = [str(d) for d in range(10)]
# Photos held out of training: seen only by val / test.
VAL_BACKGROUNDS = ("aero3", "orange", "pic3")
TEST_BACKGROUNDS = ("board", "building", "smarties", "starry_night")
# Columns of the 50x100 digit sheet per split (each class has 5 rows, so 400 / 50 / 50 digits per class).
SPLIT_COLUMNS = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}
# Share of training crops that get synthetic busy clutter (`add_distractors`; from runs/demo9 on).
DISTRACTOR_P = 0.4
# The ink's lowest contrast: each digit's is drawn uniformly from [MIN_CONTRAST, 1].
MIN_CONTRAST = 0.7


@dataclass(frozen=True)
class Composition:
    """How a digit is drawn. Sizes are the digit's ink height in pixels at the output size."""

    size: int = 224
    min_digit: float = 44.0
    max_digit: float = 100.0
    max_rotation: float = 15.0

    def __post_init__(self):
        # Checked here, where the fields are defined, so that every caller refuses the same
        # values by name instead of drawing nonsense.
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 16:
            raise ValueError(f"Composition.size must be an int >= 16 (pixels), got {self.size!r}")
        if not 0.0 < self.min_digit <= self.max_digit <= self.size:
            raise ValueError(
                f"Composition: need 0 < min_digit <= max_digit <= size, got min_digit "
                f"{self.min_digit}, max_digit {self.max_digit}, size {self.size}"
            )
        if not 0.0 <= self.max_rotation <= 180.0:
            raise ValueError(f"Composition.max_rotation must be in [0, 180] degrees, got {self.max_rotation}")


def _imread(path: str, flags: int):
    import cv2

    img = cv2.imread(path, flags)
    if img is None:
        raise FileNotFoundError(f"cannot read demo asset {path}")
    return img


def _load_digits() -> np.ndarray:
    """[10, 5, 100, 20, 20] uint8: class, row within the class, column, pixels."""
    import cv2

    sheet = _imread(os.path.join(ASSETS, "digits.png"), cv2.IMREAD_GRAYSCALE)
    if sheet.shape != (1000, 2000):
        raise ValueError(f"digits.png: expected a 1000x2000 sheet, got {sheet.shape}")
    return sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(10, 5, 100, 20, 20)


def _background_names(split: str) -> List[str]:
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(ASSETS, "backgrounds")))
    held = {"val": VAL_BACKGROUNDS, "test": TEST_BACKGROUNDS}
    if split == "train":
        return [n for n in names if n not in VAL_BACKGROUNDS + TEST_BACKGROUNDS]
    return [n for n in names if n in held[split]]


def ink_coverage(glyph: np.ndarray, matrix: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """`glyph` ([20, 20] ink in [0, 1]) warped by the 2x3 `matrix` onto an image of `shape` (h, w):
    float32 [h, w], how much of each pixel is ink (the blend weight before the ink's contrast)."""
    import cv2

    h, w = shape
    return np.clip(cv2.warpAffine(glyph, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0), 0.0, 1.0)


def draw_digit(
    bg: np.ndarray, alpha: np.ndarray, contrast: float, tint: np.ndarray
) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """Blend ink of coverage `alpha` (`ink_coverage`: float32 [h, w] in [0, 1]) onto `bg` (float32
    RGB [h, w, 3]). The ink contrasts with the ground under it: light (255 - tint) on dark, dark
    (tint) on light. Returns the float image and the ink's box (x0, y0, x1, y1), exclusive; the box
    is empty (0, 0, 0, 0) when the digit falls outside the image."""
    mask = alpha > 0.2
    if not mask.any():
        return bg.copy(), (0, 0, 0, 0)
    under = bg[mask].mean()
    ink = (255.0 - tint) if under < 128 else tint
    a = (alpha * np.float32(contrast))[..., None]
    img = bg * (1 - a) + ink.astype(np.float32) * a
    ys, xs = np.nonzero(mask)
    return img, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def add_distractors(rng: np.random.Generator, bgr: np.ndarray) -> np.ndarray:
    """Busy, high-contrast clutter drawn over a uint8 BGR crop (same shape and dtype): straight
    lines, window grids, rectangles, ellipses and smooth pen-like curves. The test photos that
    the model reads worst are exactly such textures (a circuit board, a building's window grid,
    brush strokes), and OpenCV's 19 training photos hold few of them. No digit shapes are drawn, so a
    label never changes."""
    import cv2

    img = np.ascontiguousarray(bgr).copy()
    h, w = img.shape[:2]

    def colour():
        return tuple(int(v) for v in rng.integers(0, 256, 3))

    for _ in range(int(rng.integers(2, 9))):
        kind, t = int(rng.integers(5)), int(rng.integers(1, 5))
        if kind == 0:  # straight lines
            for _ in range(int(rng.integers(1, 6))):
                p0, p1 = rng.integers(0, [w, h]), rng.integers(0, [w, h])
                cv2.line(img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), colour(), t, cv2.LINE_AA)
        elif kind == 1:  # a window grid over part of the crop
            x0, y0 = rng.integers(0, [w // 2, h // 2])
            x1, y1 = x0 + rng.integers(w // 4, w - x0 + 1), y0 + rng.integers(h // 4, h - y0 + 1)
            step = int(rng.integers(8, 40))
            c = colour()
            for x in range(int(x0), int(x1), step):
                cv2.line(img, (x, int(y0)), (x, int(y1)), c, t)
            for y in range(int(y0), int(y1), int(step * rng.uniform(0.6, 1.6)) or step):
                cv2.line(img, (int(x0), y), (int(x1), y), c, t)
        elif kind == 2:  # rectangles, outlined or filled
            for _ in range(int(rng.integers(1, 5))):
                p0 = rng.integers(0, [w, h])
                p1 = p0 + rng.integers(6, max(7, w // 3), 2)
                cv2.rectangle(
                    img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), colour(), -1 if rng.random() < 0.4 else t
                )
        elif kind == 3:  # ellipses
            for _ in range(int(rng.integers(1, 4))):
                c0, ax = rng.integers(0, [w, h]), rng.integers(4, max(5, w // 4), 2)
                cv2.ellipse(
                    img,
                    (int(c0[0]), int(c0[1])),
                    (int(ax[0]), int(ax[1])),
                    float(rng.uniform(0, 180)),
                    0.0,
                    float(rng.uniform(90, 360)),
                    colour(),
                    t,
                    cv2.LINE_AA,
                )
        else:  # a smooth curve, like a brush or pen stroke (a quadratic Bezier)
            ctrl = rng.uniform(0, 1, (3, 2)) * [w, h]
            s = np.linspace(0, 1, 24)[:, None]
            pts = (1 - s) ** 2 * ctrl[0] + 2 * s * (1 - s) * ctrl[1] + s**2 * ctrl[2]
            cv2.polylines(img, [pts.astype(np.int32)], False, colour(), t + int(rng.integers(0, 4)), cv2.LINE_AA)
    return img


def recolour(
    rng: np.random.Generator, bgr: np.ndarray, others: Sequence[np.ndarray] = (), distractors: float = DISTRACTOR_P
) -> np.ndarray:
    """A random re-colouring (and, for a square crop, re-orientation) of a uint8 BGR background
    crop (same shape and dtype): so many variants of each training photo that the model learns
    "digit vs anything", not our 34 training photos. `distractors`: the chance of `add_distractors`."""
    import cv2

    img = bgr
    if img.shape[0] == img.shape[1]:  # a quarter turn and a vertical flip: clutter has no "up"
        img = np.rot90(img, int(rng.integers(4)))
        if rng.random() < 0.5:
            img = img[::-1]
        img = np.ascontiguousarray(img)
    if others and rng.random() < 0.3:  # a second photo blended in: new textures and edges
        o = others[rng.integers(len(others))]
        h, w = o.shape[:2]
        side = int(rng.uniform(0.3, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        o = cv2.resize(o[y : y + side, x : x + side], img.shape[1::-1], interpolation=cv2.INTER_AREA)
        img = cv2.addWeighted(img, 1.0 - (a := rng.uniform(0.3, 0.7)), o, a, 0.0)
    if rng.random() < distractors:  # synthetic busy clutter, drawn before the colours change
        img = add_distractors(rng, img)
    if rng.random() < 0.5:
        img = img[:, :, rng.permutation(3)]
    if rng.random() < 0.4:  # hue rotation (OpenCV's 8-bit hue runs 0..179)
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + rng.integers(180)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.random() < 0.15:
        img = np.repeat(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY)[..., None], 3, 2)
    if rng.random() < 0.2:
        img = 255 - img
    gamma = float(np.exp(rng.uniform(-0.5, 0.5)))
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(img), lut)


def _photo_probabilities(split: str, names: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """`weights` ({photo name: relative weight}, every photo of the split named) as probabilities."""
    unknown = sorted(set(weights) - set(names))
    missing = sorted(set(names) - set(weights))
    if unknown or missing:
        raise ValueError(
            f"photo_weights for split {split!r}: "
            + "; ".join(
                ([f"not photos of this split: {unknown}"] if unknown else [])
                + ([f"photos without a weight: {missing}"] if missing else [])
            )
        )
    w = np.array([float(weights[n]) for n in names], np.float64)
    bad = [n for n, v in zip(names, w) if not np.isfinite(v) or v < 0]
    if bad or w.sum() <= 0:
        raise ValueError(
            f"photo_weights for split {split!r} must be finite, >= 0 and not all 0" + (f"; bad: {bad}" if bad else "")
        )
    return w / w.sum()


class DigitsInClutter:
    """Deterministic generator of one split. `clutter` in [0, 1] scales the photo's brightness
    (0 = black background, the curriculum's start; 1 = the real task). `photo_weights`: a relative
    weight for every photo of the split (by name), to draw hard scenes more often than easy ones
    (default: each photo equally often; with weights the images differ from the default's)."""

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        composition: Composition = Composition(),
        augment: Optional[bool] = None,
        photo_weights: Optional[Mapping[str, float]] = None,
    ):
        import cv2

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split, self.seed, self.comp = split, int(seed), composition
        self.augment = split == "train" if augment is None else bool(augment)
        digits = _load_digits()
        cols = list(SPLIT_COLUMNS[split])
        self.digits = digits[:, :, cols].reshape(10, -1, 20, 20)  # [10, 5 * len(cols), 20, 20]
        self.backgrounds = [
            _imread(os.path.join(ASSETS, "backgrounds", n + ".jpg"), cv2.IMREAD_COLOR) for n in _background_names(split)
        ]
        self.background_names = _background_names(split)
        if not self.backgrounds:
            raise FileNotFoundError(f"no background photos for split {split!r} under {ASSETS}")
        self.photo_p = (
            None if photo_weights is None else _photo_probabilities(split, self.background_names, photo_weights)
        )

    def __len__(self) -> int:
        """Distinct digits in this split (images are unlimited: index any non-negative integer)."""
        return self.digits.shape[0] * self.digits.shape[1]

    def _rng(self, index: int, *stream: int) -> np.random.Generator:
        """Image `index`'s random stream (`stream`: a further, independent one for the same image)."""
        return np.random.default_rng([self.seed, SPLITS.index(self.split), int(index), *stream])

    def _choices(self, rng: np.random.Generator) -> Tuple[int, int, int]:
        """An image's first draws, in this order: (label, glyph, photo), indices."""
        label = int(rng.integers(10))
        glyph = int(rng.integers(self.digits.shape[1]))
        if self.photo_p is None:
            return label, glyph, int(rng.integers(len(self.backgrounds)))
        return label, glyph, int(rng.choice(len(self.backgrounds), p=self.photo_p))

    def _background(self, rng: np.random.Generator, size: int, index: int, photo: int) -> np.ndarray:
        import cv2

        bg = self.backgrounds[photo]
        h, w = bg.shape[:2]
        side = int(self._crop_share(rng) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = cv2.resize(bg[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if self.augment:
            # Its own random stream, so the digit and its box are the same with or without it.
            crop = recolour(self._rng(index, 1), np.ascontiguousarray(crop), self.backgrounds)
        return cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2RGB).astype(np.float32)

    @staticmethod
    def _crop_share(rng: np.random.Generator) -> float:
        """The background crop's side as a share of the photo's shorter side (the draw after `_choices`)."""
        return float(rng.uniform(0.45, 1.0))

    def background_of(self, index: int) -> str:
        """The name of the photo image `index` is drawn on."""
        return self.crop_of(index)[0]

    def crop_of(self, index: int) -> Tuple[str, float]:
        """(photo, crop share) of image `index`: the photo it is drawn on, and its square crop's
        side as a share of the photo's shorter side (0.45-1: small shares zoom the photo in)."""
        rng = self._rng(index)
        photo = self._choices(rng)[2]
        return self.background_names[photo], self._crop_share(rng)

    def sample(self, index: int, clutter: float = 1.0) -> Tuple[np.ndarray, int, Tuple[int, int, int, int]]:
        """Image `index`: (RGB uint8 [size, size, 3], label, box (x0, y0, x1, y1) of the ink)."""
        import cv2

        if not 0.0 <= clutter <= 1.0:
            raise ValueError(f"clutter must be in [0, 1], got {clutter}")
        c, rng = self.comp, self._rng(index)
        label, which, photo = self._choices(rng)
        glyph = self.digits[label, which].astype(np.float32) / 255.0
        bg = self._background(rng, c.size, index, photo) * clutter
        # Scale so the ink (not the 20x20 cell) is `height` pixels tall, rotate, place fully inside.
        rows, cols = np.nonzero(glyph.max(1) > 0.2)[0], np.nonzero(glyph.max(0) > 0.2)[0]
        ink_h = max(1, rows[-1] - rows[0] + 1) if rows.size else 20
        ink_w = max(1, cols[-1] - cols[0] + 1) if cols.size else 20
        height = rng.uniform(c.min_digit, c.max_digit)
        scale = height / max(ink_h, 0.6 * ink_w)  # a flat glyph is scaled by its width instead
        angle = rng.uniform(-c.max_rotation, c.max_rotation)
        m = cv2.getRotationMatrix2D((10.0, 10.0), angle, scale)
        ys, xs = np.nonzero(glyph > 0.2)
        pts = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float32) @ m.T  # ink pixels, mapped
        lo, hi = pts.min(0) - scale, pts.max(0) + scale
        span = hi - lo
        room = np.maximum(c.size - span, 0.0)
        shift = np.array([rng.uniform(0, room[0]), rng.uniform(0, room[1])]) - lo
        m[:, 2] += shift
        contrast = rng.uniform(MIN_CONTRAST, 1.0)
        tint = rng.uniform(0.0, 80.0, 3).astype(np.float32)
        alpha = ink_coverage(glyph, m, bg.shape[:2])
        img, box = draw_digit(bg, alpha, contrast, tint)
        img = img + rng.integers(-4, 5, bg.shape, dtype=np.int16)  # sensor-like noise
        img = np.clip(img, 0, 255).astype(np.uint8)
        return img, label, box

    def batch(
        self, indices: Sequence[int], clutter: float | Sequence[float] = 1.0, size: Optional[int] = None
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uint8 [B, size, size, 3], labels [B] int64, boxes [B, 4]) for `indices`, optionally resized."""
        import cv2

        clutters = [clutter] * len(indices) if np.isscalar(clutter) else list(clutter)
        imgs, labels, boxes = [], [], []
        for i, cl in zip(indices, clutters):
            img, y, box = self.sample(i, float(cl))
            if size is not None and size != img.shape[0]:
                s = size / img.shape[0]
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
                box = tuple(int(round(v * s)) for v in box)
            imgs.append(img)
            labels.append(y)
            boxes.append(box)
        return np.stack(imgs), np.asarray(labels, np.int64), np.asarray(boxes, np.int64)


def write_dataset(
    root: str, sizes: Dict[str, int] = None, seed: int = 0, clutter: float = 1.0, progress: bool = True
) -> Dict[str, int]:
    """Write ImageFolder splits `root/{split}/{digit}/{index:06d}.png` and `root/boxes.json`
    ({"split/digit/index.png": [x0, y0, x1, y1]}). Returns the image count per split."""
    import cv2

    sizes = dict(sizes or {"train": 5000, "val": 500, "test": 1000})
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
    for split, n in sizes.items():  # all checked before any image is written
        if n < 0:
            raise ValueError(f"{split}: image count must be >= 0, got {n}")
    boxes: Dict[str, List[int]] = {}
    for split, n in sizes.items():
        gen = DigitsInClutter(split, seed=seed)
        for d in CLASSES:
            os.makedirs(os.path.join(root, split, d), exist_ok=True)
        it = range(n)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=split, dynamic_ncols=True)
        for i in it:
            img, label, box = gen.sample(i, clutter)
            rel = f"{split}/{label}/{i:06d}.png"
            if not cv2.imwrite(os.path.join(root, rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"cannot write {os.path.join(root, rel)}")
            boxes[rel] = list(box)
    with open(os.path.join(root, "boxes.json"), "w") as f:
        json.dump({"seed": seed, "clutter": clutter, "boxes": boxes}, f)
    return sizes


def read_boxes(root: str) -> Dict[str, Tuple[int, int, int, int]]:
    """The boxes written by `write_dataset`, keyed by path relative to `root`."""
    path = os.path.join(root, "boxes.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no boxes file (write the dataset with `iared-edge make-digits`)")
    with open(path) as f:
        return {k: tuple(v) for k, v in json.load(f)["boxes"].items()}
