"""Frame sources for `Runtime.stream`: camera index, video file, RTSP/HTTP URL, or any iterable."""
from __future__ import annotations

import os
from typing import Any, Iterator, Tuple

LIVE = "live"   # camera or network stream: under overload, drop the oldest frames
FILE = "file"   # a file or an iterable: drop nothing unless asked


def import_cv2():
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("video sources need OpenCV: pip install opencv-python-headless "
                          "(or opencv-python for windows)") from exc
    return cv2


class CaptureSource:
    """cv2.VideoCapture over a camera index, a file or a URL, opened with clear errors."""

    def __init__(self, source: Any):
        cv2 = import_cv2()
        if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
            raise TypeError(f"unsupported source {source!r}")
        self.name = str(source)
        self._first = None  # a file's first frame, read at open to refuse files with none
        if isinstance(source, int):
            self.kind = LIVE
            self.cap = cv2.VideoCapture(source)
            if not self.cap.isOpened():
                raise RuntimeError(f"camera {source} could not be opened (no such device, or busy)")
        else:
            source = os.fspath(source)
            if " ! " in source:  # a GStreamer pipeline (e.g. a Jetson CSI camera): live
                self.kind = LIVE
                self.cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
                if not self.cap.isOpened():
                    raise ValueError(f"GStreamer pipeline could not be opened (does this OpenCV have GStreamer? "
                                     f"pip's wheels do not; JetPack's python3-opencv does): {source}")
                return
            is_url = "://" in source
            if not is_url and not os.path.isfile(source):
                raise FileNotFoundError(f"no such video file: {source}")
            self.kind = LIVE if is_url else FILE
            self.cap = cv2.VideoCapture(source)
            if not self.cap.isOpened():
                raise ValueError(f"{source}: cannot be opened as a video (corrupt, or an unsupported format)")
            if self.kind == FILE:
                # some corrupt files open (FFmpeg guesses a format from stray bytes) yet hold no frame:
                # read the first one now so they fail here, named, rather than end as an empty stream
                ok, frame = self.cap.read()
                if not ok:
                    self.cap.release()
                    raise ValueError(f"{source}: no frame could be read (corrupt, or an unsupported format)")
                self._first = frame

    def frames(self) -> Iterator[Tuple[bool, Any]]:
        """(ok, frame) pairs; ok False once the source ends or is lost."""
        if self._first is not None:
            frame, self._first = self._first, None
            yield True, frame
        while True:
            ok, frame = self.cap.read()
            yield ok, frame
            if not ok:
                return

    def release(self) -> None:
        self.cap.release()


class IterableSource:
    kind = FILE

    def __init__(self, frames: Any):
        self.name = type(frames).__name__
        self._it = iter(frames)

    def frames(self) -> Iterator[Tuple[bool, Any]]:
        for frame in self._it:
            yield True, frame
        yield False, None

    def release(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def open_source(source: Any):
    """A source for `Runtime.stream`; "demo" is the bundled street clip with digits."""
    if isinstance(source, str) and source == "demo":
        from ..demo.clip import DEMO_CLIP
        return CaptureSource(DEMO_CLIP)
    if isinstance(source, (int, str, os.PathLike)) and not isinstance(source, bool):
        return CaptureSource(source)
    if hasattr(source, "__iter__"):
        return IterableSource(source)
    raise TypeError(f"source must be a camera index, a path, a URL or an iterable of frames, got {type(source).__name__}")
