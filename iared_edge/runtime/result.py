"""Result: one frame's answer (labels, probabilities, heatmap at the frame's size, kept-patch
masks, latency), and the overlay a camera app shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ..preprocess import grid_to_frame, overlay


def three_channels(frame: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 from that, H x W grey (or H x W x 1) or H x W x 4 with alpha; anything else
    a ValueError naming what it got. Mono cameras and BGRA capture pipelines are common on robots."""
    if frame.dtype == np.uint8 and frame.ndim == 2:
        frame = frame[..., None]
    if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] in (1, 4):
        frame = np.broadcast_to(frame, frame.shape[:2] + (3,)) if frame.shape[2] == 1 else frame[..., :3]
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"frame must be H x W x 3 uint8 (or H x W grey, H x W x 4 with alpha), got {frame.dtype} {frame.shape}"
        )
    return frame


class Answer(NamedTuple):
    """What the model said about one frame: Result's fields that come from the forward."""

    labels: List[str]
    probs: List[float]
    indices: List[int]
    heatmap: np.ndarray
    stage_masks: np.ndarray
    stage_keep: List[float]
    keep_ratio: float


@dataclass
class Result:
    """One frame's answer."""

    labels: List[str]  # top-k class names, best first
    probs: List[float]  # their probabilities
    indices: List[int]  # their class indices
    heatmap: np.ndarray  # H x W float32 in [0, 1], the frame's size
    stage_masks: np.ndarray  # [S, gh, gw] bool: patches kept by each stage
    stage_keep: List[float]  # fraction of patch tokens kept by each stage
    keep_ratio: float  # fraction of patch tokens kept, averaged over the stages
    latency_ms: Dict[str, float]  # preprocess, model, postprocess, total
    frame_index: int
    timestamp: float  # time.time() when the frame was taken in
    keep_level: Optional[float] = None  # the budget controller's keep level, when a budget is set
    threads: Optional[int] = None  # CPU threads the controller ran this frame with
    fit: str = "squash"  # how the frame became the model's input (Runtime's fit=)
    input_size: Optional[Tuple[int, int]] = None  # the model's input (H, W)

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def score(self) -> float:
        return self.probs[0]

    def summary(self) -> Dict[str, Any]:
        """This Result without its arrays, ready for `json.dumps`: frame index, timestamp, label and
        confidence, the top-k, keep levels, latency, and the budget's keep level and threads."""
        return {
            "frame": self.frame_index,
            "timestamp": self.timestamp,
            "label": self.label,
            "confidence": self.score,
            "top": [{"label": name, "prob": p} for name, p in zip(self.labels, self.probs)],
            "keep_ratio": self.keep_ratio,
            "stage_keep": list(self.stage_keep),
            "latency_ms": dict(self.latency_ms),
            "keep_level": self.keep_level,
            "threads": self.threads,
        }

    def overlay(
        self, frame: np.ndarray, color: str = "bgr", heatmap: bool = True, mask: bool = True, alpha: float = 0.45
    ) -> np.ndarray:
        """`frame` (the one this Result answers; H x W x 3 uint8, BGR unless color="rgb"; H x W grey
        or H x W x 4 with alpha give 3 channels) with the heatmap blended in where it is warm (the
        frame shows through) and the patches dropped by the last stage greyed, in the frame's colour
        order: what to show in a camera app."""
        if color not in ("bgr", "rgb"):
            raise ValueError(f'color must be "bgr" (OpenCV) or "rgb", got {color!r}')
        frame = three_channels(np.asarray(frame))
        if frame.shape[:2] != self.heatmap.shape:
            raise ValueError(
                f"frame is {frame.shape[1]}x{frame.shape[0]}, but this Result answers a "
                f"{self.heatmap.shape[1]}x{self.heatmap.shape[0]} frame"
            )
        rgb = np.ascontiguousarray(frame[..., ::-1] if color == "bgr" else frame)
        heat = self.heatmap if heatmap else np.zeros_like(self.heatmap)
        kept = self.stage_masks[-1]
        if self.fit != "squash":  # the grid covers part of the frame (crop) or the frame part of it (letterbox)
            kept = grid_to_frame(kept, frame.shape[:2], self.input_size, self.fit, nearest=True) > 0.5
        pic = overlay(rgb, heat, kept if mask else None, alpha=alpha if heatmap else 0.0)
        return np.ascontiguousarray(pic[..., ::-1]) if color == "bgr" else pic
