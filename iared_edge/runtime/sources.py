"""Frame sources for `Runtime.stream`: camera index, video file, RTSP/HTTP URL, or any iterable."""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator, Optional, Tuple

LIVE = "live"  # camera or network stream: under overload, drop the oldest frames
FILE = "file"  # a file or an iterable: drop nothing unless asked


def import_cv2():
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(
            "video sources need OpenCV: pip install opencv-python-headless (or opencv-python for windows)"
        ) from exc
    return cv2


def reconnect_delay(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0, 1, ...): 0.5, 1, 2, 4, then 8."""
    return min(0.5 * 2**attempt, 8.0)


class CaptureSource:
    """cv2.VideoCapture over a camera index, a file or a URL, opened with clear errors. A live
    source that stops giving frames is opened again up to `reconnect` times in a row (waiting
    `reconnect_delay` before each; `stop` cuts the wait short); `reconnects` counts the times it
    came back."""

    def __init__(self, source: Any, reconnect: int = 0, stop: Optional[threading.Event] = None):
        cv2 = import_cv2()
        if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
            raise TypeError(f"unsupported source {source!r}")
        self.name = str(source)
        self.reconnect, self.reconnects, self.failed_attempts = reconnect, 0, 0
        self.reconnecting = False  # lost, and being opened again
        self._stop = stop if stop is not None else threading.Event()
        self._first = None  # a file's first frame, read at open to refuse files with none
        self._open_args: Tuple = (source,)  # what VideoCapture was given: reconnect opens it again
        if isinstance(source, int):
            self.kind = LIVE
            self.cap = cv2.VideoCapture(source)
            if not self.cap.isOpened():
                raise RuntimeError(f"camera {source} could not be opened (no such device, or busy)")
        else:
            source = os.fspath(source)
            if " ! " in source:  # a GStreamer pipeline (e.g. a Jetson CSI camera): live
                self.kind = LIVE
                self._open_args = (source, cv2.CAP_GSTREAMER)
                self.cap = cv2.VideoCapture(*self._open_args)
                if not self.cap.isOpened():
                    raise ValueError(
                        f"GStreamer pipeline could not be opened (does this OpenCV have GStreamer? "
                        f"pip's wheels do not; JetPack's python3-opencv does): {source}"
                    )
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
        """(ok, frame) pairs; ok False once the source ends, or is lost and did not come back."""
        if self._first is not None:
            frame, self._first = self._first, None
            yield True, frame
        lost = False
        while True:
            ok, frame = self.cap.read()
            if ok:
                if lost:
                    self.reconnects += 1
                    lost, self.failed_attempts, self.reconnecting = False, 0, False
            elif self.kind == LIVE and self.failed_attempts < self.reconnect and not self.at_end():
                lost = self.reconnecting = True
                if self._stop.wait(reconnect_delay(self.failed_attempts)):
                    ok = False  # stopped while waiting
                else:
                    self.failed_attempts += 1
                    self.cap.release()
                    self.cap = import_cv2().VideoCapture(*self._open_args)
                    continue
            if not ok:
                self.reconnecting = False
            yield ok, frame
            if not ok:
                return

    def at_end(self) -> bool:
        """Whether the last read failed because a finite video (a file served over HTTP) ended,
        not because a live source was lost: it knows its frame count and has read them all."""
        cv2 = import_cv2()
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        return count > 0 and self.cap.get(cv2.CAP_PROP_POS_FRAMES) >= count

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


def open_source(source: Any, reconnect: int = 0, stop: Optional[threading.Event] = None):
    """A source for `Runtime.stream`; "demo" is the bundled street clip with digits. `reconnect`
    and `stop`: see CaptureSource (live sources only)."""
    if isinstance(reconnect, bool) or not isinstance(reconnect, int) or reconnect < 0:
        raise ValueError(f"reconnect must be an int >= 0 (attempts in a row), got {reconnect!r}")
    if isinstance(source, str) and source == "demo":
        from ..demo.clip import DEMO_CLIP

        return CaptureSource(DEMO_CLIP)
    if isinstance(source, (int, str, os.PathLike)) and not isinstance(source, bool):
        return CaptureSource(source, reconnect, stop)
    if hasattr(source, "__iter__"):
        return IterableSource(source)
    raise TypeError(
        f"source must be a camera index, a path, a URL or an iterable of frames, got {type(source).__name__}"
    )
