"""RemoteRuntime: the Runtime's call surface over gRPC to one or more `iared-edge serve` servers
(or any Triton serving model "iared" the same way).

with RemoteRuntime("localhost:8001") as rt:
    for frame, res in rt.stream(0):          # several frames in flight, answers in order
        print(res.label, res.keep_ratio)

Several URLs: frames go round-robin to the servers that answer; a server that stops answering is
left for a while and its frames go to the others. A frame whose server died is sent again, with
bounded retries, so a server restarted mid-stream costs a gap, not frames: every frame either
gets its Result or is counted in `stats()["failed"]` with the reason.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..preprocess import grid_to_frame
from ..runtime.result import Result, three_channels
from ..runtime.sources import LIVE, open_source
from . import protocol
from .protocol import FrameError, encode_frame, split_url


class ServerUnavailable(ConnectionError):
    """No server answered within the retries: the frame got no answer."""


class ServerError(RuntimeError):
    """A server answered this frame with an error that is not about the frame (its batch failed,
    or it is not an iared-edge server): the frame got no answer."""


class _Server:
    def __init__(self, url: str):
        from tritonclient.grpc import InferenceServerClient

        host, port = split_url(url)  # a clear error for a malformed address, here
        self.url = f"{host}:{port}"
        self.client = InferenceServerClient(self.url)
        self.down_until = 0.0  # monotonic time before which this server is not tried

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # a client whose channel already failed
            pass


def _unavailable(exc: Exception) -> bool:
    """Whether a tritonclient error means the server is gone or not there yet (retry elsewhere or
    later), rather than an answer about this request."""
    status = str(getattr(exc, "status", lambda: None)())
    text = str(exc)
    gone = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")
    starting = ("not ready", "unknown model", "Stub process", "failed to connect", "Failed to connect")
    starting += ("Cancelled responses handler", "inference handler is stopped")  # pytriton shutting down
    return any(s in status for s in gone) or any(s in text for s in starting)


class RemoteRuntime:
    """Frames to `iared-edge serve` servers, Results back (the local Runtime's call surface):
    `rt(frame)`, `rt.stream(source)`, `rt.stats()`, a context manager.

    urls: "host:port" of the servers' gRPC ports (one string or several).
    color: "bgr" (OpenCV frames) or "rgb". encoding: "jpeg" (quality `quality`) or "png" (lossless).
    in_flight: frames a stream keeps sent and not yet answered (a camera does not wait a round trip).
    timeout_s: per request. retry_s: how long a frame is tried, over all servers, before it is
    counted failed (no request outlives it). down_s: how long a server that did not answer is
    left out (with one server: the wait between tries).
    """

    def __init__(
        self,
        urls: Union[str, Sequence[str]],
        color: str = "bgr",
        encoding: str = "jpeg",
        quality: int = 90,
        in_flight: int = 4,
        timeout_s: float = 10.0,
        retry_s: float = 30.0,
        down_s: float = 1.0,
    ):
        try:
            import tritonclient.grpc  # noqa: F401
        except ImportError:
            raise ImportError("RemoteRuntime needs tritonclient: pip install 'iared-edge[serve]'") from None
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("RemoteRuntime needs at least one server URL (host:port)")
        if color not in ("bgr", "rgb"):
            raise ValueError(f'color must be "bgr" (OpenCV) or "rgb", got {color!r}')
        if encoding not in protocol.ENCODINGS:
            raise ValueError(f"encoding must be one of {protocol.ENCODINGS}, got {encoding!r}")
        if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
            raise ValueError(f"in_flight must be an int >= 1, got {in_flight!r}")
        for name, v in (("timeout_s", timeout_s), ("retry_s", retry_s), ("down_s", down_s)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        self.color, self.encoding, self.quality = color, encoding, quality
        self.in_flight, self.timeout_s = in_flight, timeout_s
        self.retry_s, self.down_s = retry_s, down_s
        self.servers = [_Server(u) for u in urls]
        self._turn = 0  # the next server, round-robin
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="iared-remote")
        self._lock = threading.Lock()
        self._frames = 0
        self._latency: deque = deque(maxlen=10000)
        self._keep: deque = deque(maxlen=10000)
        self._t_first: Optional[float] = None
        self._t_last: Optional[float] = None
        self._retries = 0  # sends that failed and were tried again
        self._reconnects = 0  # frames answered after their server had failed them
        self._gap_s = 0.0  # time frames spent waiting for a server to come back
        self._per_server: Counter = Counter()
        self._failed: List[Tuple[int, str]] = []  # (frame index, why): no answer after the retries
        self._skipped: List[Tuple[int, str]] = []  # (frame index, the server's error): a bad frame
        self._end_reason: Optional[str] = None
        self._issued = 0  # frame indices handed out
        self._dropped = 0  # live frames dropped because the answers fell behind
        self._closed = False

    # -- one frame ---------------------------------------------------------------------------------
    def _pick(self) -> Optional[_Server]:
        """The next server not left out, round-robin (the workers share the turn)."""
        with self._lock:
            now = time.monotonic()
            for _ in range(len(self.servers)):
                server = self.servers[self._turn]
                self._turn = (self._turn + 1) % len(self.servers)
                if server.down_until <= now:
                    return server
        return None

    def _send(self, payload: bytes) -> Tuple[Dict[str, np.ndarray], str, float]:
        """One frame to a server that answers: a server that fails is left out for down_s and the
        next one tried at once; with all left out, the first to come back; all within retry_s.
        Returns (outputs, server url, seconds from the first failure to the answer)."""
        from tritonclient.grpc import InferInput
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.retry_s
        tries, first_failure, last = 0, None, "no server tried"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerUnavailable(f"no server answered in {self.retry_s:g} s ({tries} tries; last: {last})")
            server = self._pick()
            if server is None:  # every server left out: wait for the first to be tried again
                back = min(s.down_until for s in self.servers) - time.monotonic()
                time.sleep(max(0.0, min(back, left)))
                continue
            inp = InferInput(protocol.INPUT, [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
            try:
                res = server.client.infer(protocol.MODEL, [inp], client_timeout=max(min(self.timeout_s, left), 0.001))
            except InferenceServerException as exc:
                message = exc.message() if hasattr(exc, "message") else str(exc)
                if not _unavailable(exc):
                    raise ServerError(f"{server.url}: {message}") from None
                last = f"{server.url}: {message}"
                first_failure = first_failure or time.monotonic()
                tries += 1
                with self._lock:
                    server.down_until = time.monotonic() + self.down_s
                    self._retries += 1
                continue
            outs = {name: res.as_numpy(name) for name in protocol.OUTPUTS}
            missing = [name for name, v in outs.items() if v is None]
            if missing:
                raise ServerError(f"{server.url}: model {protocol.MODEL!r} gave no {missing} (not iared-edge serve?)")
            if tries:
                with self._lock:
                    self._reconnects += 1
            return outs, server.url, (time.monotonic() - first_failure) if first_failure else 0.0

    def _result(self, frame: np.ndarray, outs: Dict[str, np.ndarray], index: int, t0: float, ts: float) -> Result:
        error = outs["error"][0, 0]
        if error:
            raise FrameError((error.decode() if isinstance(error, bytes) else str(error)) or "bad frame")
        h, w = frame.shape[:2]
        size = tuple(int(v) for v in outs["input_size"][0])
        fit = outs["fit"][0, 0].decode()
        heat = grid_to_frame(outs["heatmap"][0], (h, w), size, fit)
        counts = outs["kept_counts"][0]
        n = int(outs["stage_masks"][0][0].size)
        total = (time.perf_counter() - t0) * 1e3
        return Result(
            labels=[b.decode() for b in outs["labels"][0]],
            probs=[float(p) for p in outs["probs"][0]],
            indices=[int(i) for i in outs["indices"][0]],
            heatmap=np.clip(heat, 0, 1).astype(np.float32),
            stage_masks=outs["stage_masks"][0].astype(bool),
            stage_keep=[int(c) / n for c in counts],
            keep_ratio=float(outs["keep_ratio"][0, 0]),
            latency_ms={"total": total},
            frame_index=index,
            timestamp=ts,
            fit=fit,
            input_size=size,
        )

    def _frame(self, frame: Any, color: Optional[str]) -> Tuple[np.ndarray, bytes]:
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be an H x W x 3 uint8 array, got {type(frame).__name__}")
        frame = three_channels(frame)
        return frame, encode_frame(frame, color or self.color, self.encoding, self.quality)

    def _run(self, frame: np.ndarray, payload: bytes, index: int, ts: float) -> Result:
        t0 = time.perf_counter()
        try:
            outs, url, lost = self._send(payload)
        except (ServerUnavailable, ServerError) as exc:
            with self._lock:
                self._failed.append((index, str(exc)))
            raise
        try:
            result = self._result(frame, outs, index, t0, ts)
        except FrameError as exc:
            with self._lock:
                self._skipped.append((index, str(exc)))
            raise
        with self._lock:
            self._frames += 1
            self._per_server[url] += 1
            self._gap_s += lost
            self._latency.append(result.latency_ms["total"])
            self._keep.append(result.keep_ratio)
            now = time.perf_counter()
            self._t_first = self._t_first or now
            self._t_last = now
        return result

    def _index(self) -> int:
        with self._lock:
            self._issued += 1
            return self._issued - 1

    def __call__(self, frame: Any, color: Optional[str] = None) -> Result:
        """One frame, one round trip. A frame the server refused raises FrameError (its reason);
        no server within the retries raises ServerUnavailable; a server's error about something
        else (its batch failed) raises ServerError."""
        self._check_open()
        frame, payload = self._frame(frame, color)
        return self._run(frame, payload, self._index(), time.time())

    # -- streams ---------------------------------------------------------------------------------
    def _newest(self, src, stop: threading.Event) -> Iterator[Tuple[bool, Any]]:
        """`src` read on a thread of its own, keeping only the newest `in_flight` frames: a live
        camera is not held back by the round trips (older frames are dropped and counted)."""
        buf: deque = deque()
        cond = threading.Condition()
        ended = []

        def read():
            try:
                for ok, frame in src.frames():
                    if not ok or stop.is_set():
                        break
                    with cond:
                        if len(buf) >= self.in_flight:
                            buf.popleft()
                            with self._lock:
                                self._dropped += 1
                        buf.append(frame)
                        cond.notify()
            finally:
                with cond:
                    ended.append(True)
                    cond.notify()
                src.release()

        threading.Thread(target=read, name="iared-remote-capture", daemon=True).start()
        while True:
            with cond:
                while not buf and not ended:
                    cond.wait()
                if not buf:
                    return
                frame = buf.popleft()
            yield True, frame

    def stream(
        self, source: Any, drop: Optional[bool] = None, color: Optional[str] = None, reconnect: int = 0
    ) -> Iterator[Tuple[np.ndarray, Result]]:
        """Yield (frame, result) in order for a camera index, a video file, a URL, a GStreamer
        pipeline or an iterable of frames, with up to `in_flight` frames sent ahead. Live sources
        are read on their own thread and drop their oldest frames when the answers fall behind
        (stats()["dropped"]); files and iterables drop none unless `drop=True`. A frame the server
        refused is skipped and recorded (stats()["skipped"]); one no server answered, in
        stats()["failed"]; the stream goes on either way. `reconnect`: as Runtime.stream."""
        self._check_open()
        stop = threading.Event()
        src = open_source(source, reconnect, stop)
        live = getattr(src, "kind", None) == LIVE
        drop = live if drop is None else bool(drop)
        frames = self._newest(src, stop) if drop else src.frames()
        pending: deque = deque()
        self._end_reason = None

        def drain(block: bool) -> Iterator[Tuple[np.ndarray, Result]]:
            while pending and (block or pending[0][2].done() or len(pending) >= self.in_flight):
                frame, index, fut = pending.popleft()
                try:
                    yield frame, fut.result()
                except (FrameError, ServerUnavailable, ServerError):
                    pass  # listed in stats()["skipped"] or ["failed"] by _run

        try:
            for ok, frame in frames:
                if not ok:  # the source ended (or a live one was lost and did not come back)
                    break
                index = self._index()
                try:
                    frame, payload = self._frame(np.asarray(frame), color)
                except ValueError as exc:
                    with self._lock:
                        self._skipped.append((index, str(exc)))
                    continue
                fut: Future = self._pool.submit(self._run, frame, payload, index, time.time())
                pending.append((frame, index, fut))
                yield from drain(block=False)
            yield from drain(block=True)
            self._end_reason = "source lost" if live else "end of source"
        finally:  # a consumer that stops early: frames not yet sent are not sent
            for _, _, fut in pending:
                fut.cancel()
            stop.set()
            if not drop:  # with drop, the reading thread releases the source when it ends
                src.release()

    def stats(self) -> Dict[str, Any]:
        """Frames answered, fps, round-trip latency percentiles, frames per server, live frames
        dropped while the answers fell behind, and the gaps: retries, frames answered after a
        server failed them (reconnects), seconds from such a frame's first failure to its answer
        (gap_s), frames no server answered (failed) and frames refused (skipped)."""
        with self._lock:
            lat = np.asarray(self._latency, np.float64)
            span = (self._t_last - self._t_first) if self._t_first and self._t_last else 0.0
            return {
                "frames": self._frames,
                "fps": (self._frames - 1) / span if span > 0 else 0.0,
                "latency_ms": {f"p{p}": float(np.percentile(lat, p)) if lat.size else None for p in (50, 95, 99)},
                "mean_keep_ratio": float(np.mean(self._keep)) if self._keep else None,
                "per_server": dict(self._per_server),
                "dropped": self._dropped,
                "retries": self._retries,
                "reconnects": self._reconnects,
                "gap_s": self._gap_s,
                "failed": sorted(self._failed),
                "skipped": sorted(self._skipped),
                "end_reason": self._end_reason,
            }

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this RemoteRuntime is closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True)
            for s in self.servers:
                s.close()

    def __enter__(self) -> RemoteRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
