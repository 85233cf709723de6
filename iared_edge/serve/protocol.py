"""What travels between `iared-edge serve` and its clients: the Triton model's tensors, how a
frame is encoded and decoded, and the limits a frame must keep.

Model "iared", dynamic batching on:
    input   image        BYTES [1]       one encoded frame (JPEG or PNG), any size
    outputs label        BYTES [1]       the top class name
            labels       BYTES [k]       the top-k class names, best first
            indices      INT32 [k]       their class indices
            probs        FP32  [k]       their probabilities
            logits       FP32  [classes]
            heatmap      FP32  [gh, gw]  the explanation on the patch grid
            stage_masks  BOOL  [S, gh, gw] patches kept by each stage
            kept_counts  INT32 [S]       patches kept by each stage
            keep_ratio   FP32  [1]       fraction of patches kept, averaged over the stages
            input_size   INT32 [2]       the model's input (H, W), for mapping the grid onto the frame
            fit          BYTES [1]       how the server fitted the frame to the input (squash, crop, letterbox)
            error        BYTES [1]       empty, or why this frame got no answer

A frame the server cannot take (empty, truncated, not an image, over the limits) is answered
with `error` set and the other outputs zero, in band: Triton's Python backend can fail only a
whole dynamic batch, and one camera's bad frame must not fail the frames of the others batched
with it. A wrong dtype or shape is refused by Triton itself, to that client alone.
"""

from __future__ import annotations

import io
from typing import Tuple

import numpy as np

MODEL = "iared"
INPUT = "image"
OUTPUTS = (
    "label",
    "labels",
    "indices",
    "probs",
    "logits",
    "heatmap",
    "stage_masks",
    "kept_counts",
    "keep_ratio",
    "input_size",
    "fit",
    "error",
)
ENCODINGS = ("jpeg", "png")
MAX_PAYLOAD_BYTES = 16 << 20  # one encoded frame
MAX_SIDE = 8192  # pixels, either side of a decoded frame
MAX_PIXELS = 40_000_000  # width x height of a decoded frame (an 8K frame is 33 million)


class FrameError(ValueError):
    """A frame the server could not take: the message says why (payload, format, size)."""


def decode_frame(payload) -> np.ndarray:
    """An encoded JPEG or PNG -> H x W x 3 uint8 RGB, or a FrameError naming what is wrong. The
    size is read from the header before the pixels are decoded, so a huge frame costs nothing."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(payload, np.ndarray):
        payload = payload.tobytes()
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise FrameError(f"the payload must be bytes (an encoded JPEG or PNG), got {type(payload).__name__}")
    n = len(payload)
    if n == 0:
        raise FrameError("empty payload: no encoded frame")
    if n > MAX_PAYLOAD_BYTES:
        raise FrameError(f"payload of {n} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes per frame")
    over = f"over the limits ({MAX_SIDE} pixels a side, {MAX_PIXELS} pixels in all)"
    try:
        img = Image.open(io.BytesIO(bytes(payload)))
    except UnidentifiedImageError:
        raise FrameError(f"payload of {n} bytes is not a JPEG or PNG image") from None
    except Image.DecompressionBombError:  # PIL's own size guard, on headers far over ours
        raise FrameError(f"frame is {over}") from None
    except Exception as exc:  # any other decoder fault is this payload's, never the server's
        raise FrameError(f"payload of {n} bytes is not a readable JPEG or PNG image: {exc}") from None
    if img.format not in ("JPEG", "MPO", "PNG"):  # MPO: the JPEG of many phones and cameras
        raise FrameError(f"payload is a {img.format} image; send JPEG or PNG")
    w, h = img.size
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise FrameError(f"frame of {w}x{h} is {over}")
    if w < 2 or h < 2:
        raise FrameError(f"frame too small: {w}x{h}")
    try:
        img.load()  # a truncated file raises here (PIL does not fill in missing data by default)
        return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise FrameError(f"truncated or corrupt {img.format} ({n} bytes): {exc}") from None


def encode_frame(frame: np.ndarray, color: str = "bgr", encoding: str = "jpeg", quality: int = 90) -> bytes:
    """H x W x 3 uint8 (BGR unless color="rgb") -> JPEG or PNG bytes."""
    import cv2

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if color not in ("bgr", "rgb"):
        raise ValueError(f'color must be "bgr" (OpenCV) or "rgb", got {color!r}')
    from ..runtime.result import three_channels

    frame = three_channels(np.asarray(frame))
    bgr = np.ascontiguousarray(frame[..., ::-1]) if color == "rgb" else frame
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"frame too small: {frame.shape[1]}x{frame.shape[0]}")
    try:
        if encoding == "jpeg":
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        else:
            ok, buf = cv2.imencode(".png", bgr)
    except cv2.error as exc:
        raise ValueError(f"OpenCV could not encode a {frame.shape} frame as {encoding}: {exc}") from None
    if not ok:
        raise ValueError(f"OpenCV could not encode a {frame.shape} frame as {encoding}")
    return buf.tobytes()


def split_url(url: str) -> Tuple[str, int]:
    """ "host:port" or "grpc://host:port" (a server's gRPC port) -> (host, port)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"a server URL is host:port, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        rest = url
    elif scheme != "grpc":
        raise ValueError(f"a server URL is host:port or grpc://host:port (plain gRPC), not {scheme}://: {url!r}")
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"a server URL is host:port (the gRPC port, 1..65535), got {url!r}")
    return host, int(port)
