"""Serving through the real Triton Inference Server (nvidia-pytriton's bundled binary) on loopback:
answers as the local Runtime's, bad frames answered with their errors while the other clients are
served, a client that disconnects, a server killed and restarted mid-stream, failover, and the
model repository export."""

import io
import os
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.grpc")
cv2 = pytest.importorskip("cv2")

from iared_edge.serve import FrameError, RemoteRuntime  # noqa: E402
from iared_edge.serve.process import ServerProcess, free_ports  # noqa: E402
from iared_edge.serve.protocol import MAX_SIDE, decode_frame, encode_frame  # noqa: E402


@pytest.fixture(scope="module")
def clip():
    from iared_edge.demo.clip import DEMO_CLIP

    cap = cv2.VideoCapture(DEMO_CLIP)
    frames = []
    while len(frames) < 40:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == 40
    return frames


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("serve") / "server.log")
    srv = ServerProcess(["--model", "demo"], log_path=log).start()
    yield srv
    assert srv.stop() == 0, open(log).read()[-3000:]  # SIGTERM: a clean exit


@pytest.fixture(scope="module")
def local():
    from iared_edge import Runtime

    with Runtime("demo", device="cpu", color="rgb") as rt:
        yield rt


def test_two_clients_get_the_local_runtimes_answers(server, clip, local):
    answers = {}

    def camera(name, frames):
        with RemoteRuntime(server.url, in_flight=3) as rt:
            answers[name] = [(f, r) for f, r in rt.stream(frames)]
            answers[name + " stats"] = rt.stats()

    cams = [threading.Thread(target=camera, args=(f"cam{i}", clip[i * 10 : i * 10 + 10])) for i in range(2)]
    for t in cams:
        t.start()
    for t in cams:
        t.join(120)
    for i in range(2):
        got = answers[f"cam{i}"]
        assert [r.frame_index for _, r in got] == list(range(10))  # none lost, duplicated or reordered
        assert answers[f"cam{i} stats"]["failed"] == [] and answers[f"cam{i} stats"]["skipped"] == []
        for (frame, remote), sent in zip(got, clip[i * 10 : i * 10 + 10]):
            assert frame is sent or np.array_equal(frame, sent)
            # the local Runtime on the frame the server decoded (JPEG is lossy)
            want = local(decode_frame(encode_frame(sent)), color="rgb")
            assert remote.labels == want.labels and remote.indices == want.indices
            np.testing.assert_allclose(remote.probs, want.probs, atol=1e-4)
            assert np.array_equal(remote.stage_masks, want.stage_masks)
            assert remote.stage_keep == pytest.approx(want.stage_keep)
            assert remote.keep_ratio == pytest.approx(want.keep_ratio, abs=1e-6)
            np.testing.assert_allclose(remote.heatmap, want.heatmap, atol=1e-3)
            assert remote.heatmap.shape == sent.shape[:2]


def test_webcam_sample_with_a_server(server, tmp_path, capsys):
    import importlib.util
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "samples", "webcam_explain.py")
    spec = importlib.util.spec_from_file_location("webcam_explain_server", path)
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    out = str(tmp_path / "remote.mp4")
    argv = ["--server", server.url, "--source", "demo", "--headless", "--max-frames", "6", "--output", out]
    assert sample.main(argv) == 0
    summary = json.load(open(str(tmp_path / "remote.json")))
    assert len(summary["frames"]) == 6 and summary["stats"]["failed"] == []
    assert os.path.getsize(out) > 0 and "accuracy on the clip" in capsys.readouterr().out


def _gif():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


def _png_header(w, h):
    """A PNG whose header claims w x h pixels (no pixel data follows)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _png(w, h):
    ok, buf = cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))
    return buf.tobytes()


def test_bad_frames_get_their_errors_while_another_client_is_served(server, clip):
    jpeg = encode_frame(clip[0])
    bad = {
        "empty payload": b"",
        "truncated or corrupt JPEG": jpeg[: len(jpeg) // 2],
        "not a JPEG or PNG": b"this is not an image, it is text" * 4,
        "send JPEG or PNG": _gif(),
        "over the limits": _png(MAX_SIDE + 8, 2),
        "frame is over the limits": _png_header(20000, 20000),  # past PIL's own decompression-bomb guard
    }
    stop, good = threading.Event(), []

    def other_camera():
        with RemoteRuntime(server.url) as rt:
            while not stop.is_set():
                good.append(rt(clip[1]).label)

    t = threading.Thread(target=other_camera)
    t.start()
    try:
        with RemoteRuntime(server.url) as rt:
            for what, payload in bad.items():
                outs, _, _ = rt._send(payload)
                assert what in outs["error"][0, 0].decode()
                with pytest.raises(FrameError, match=what):
                    rt._result(clip[0], outs, 0, 0.0, 0.0)
            # the Runtime's call surface: a bad frame raises FrameError with the server's reason
            with pytest.raises(ValueError, match="H x W x 3 uint8"):
                rt(np.zeros((4, 4, 3), np.float32))
            assert rt(clip[2]).label
    finally:
        stop.set()
        t.join(60)
    assert good and len(set(good)) == 1


def test_a_wrong_dtype_is_refused_by_triton_to_that_client_alone(server, clip):
    from tritonclient.grpc import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    client = InferenceServerClient(server.url)
    try:
        inp = InferInput("image", [1, 1], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
        with pytest.raises(InferenceServerException, match="data-type is 'FP32', but model 'iared' expects 'BYTES'"):
            client.infer("iared", [inp])
    finally:
        client.close()
    with RemoteRuntime(server.url) as rt:
        assert rt(clip[3]).label


def test_a_client_that_disconnects_mid_batch_does_not_stop_the_server(server, clip):
    from tritonclient.grpc import InferenceServerClient, InferInput

    payload = encode_frame(clip[4])
    for _ in range(3):
        client = InferenceServerClient(server.url)
        inp = InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
        for _ in range(4):
            client.async_infer("iared", [inp], callback=lambda *a: None)
        client.close()  # gone before its answers
    with RemoteRuntime(server.url) as rt:
        assert [r.frame_index for _, r in rt.stream(clip[:6])] == list(range(6))


def test_a_source_faster_than_the_answers_drops_its_oldest_frames(server, clip):
    """drop=True (a live source's default): the source is read on its own thread and only the
    newest frames wait; every frame is answered in order or counted as dropped."""
    import time

    def camera():  # 30 frames a second
        for f in clip:
            time.sleep(1 / 30)
            yield f

    seen = []
    with RemoteRuntime(server.url, in_flight=1) as rt:
        for frame, res in rt.stream(camera(), drop=True):
            seen.append((frame, res))
            time.sleep(0.1)  # a slow consumer (a display)
        stats = rt.stats()
    assert stats["dropped"] > 0 and len(seen) + stats["dropped"] == len(clip)
    assert [r.frame_index for _, r in seen] == list(range(len(seen)))
    order = [next(i for i, c in enumerate(clip) if c is f) for f, _ in seen]
    assert order == sorted(order) and order[0] == 0  # newest kept, never reordered
    assert stats["failed"] == [] and stats["end_reason"] == "end of source"


def test_failover_to_the_server_that_answers(server, clip):
    (dead,) = free_ports(1)
    with RemoteRuntime([f"127.0.0.1:{dead}", server.url], down_s=60.0, timeout_s=5.0) as rt:
        got = [r.frame_index for _, r in rt.stream(clip[:8])]
        stats = rt.stats()
    assert got == list(range(8))
    assert stats["per_server"] == {server.url: 8} and stats["failed"] == []
    assert stats["retries"] >= 1  # the dead one was tried, then left out


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_server_killed_and_restarted_mid_stream_loses_no_frame(tmp_path, clip, how):
    """SIGKILL (a crash) or SIGTERM (a graceful restart) at frame 8 of 24, then a new server on
    the same ports: every frame answered, in order, the gap counted."""
    srv = ServerProcess(["--model", "demo"], log_path=str(tmp_path / "server.log")).start()
    restarted = threading.Event()

    def frames():
        for i, f in enumerate(clip[:24]):
            if i == 8:  # mid-stream: killed, then a new server on the same ports
                getattr(srv, how)()

                def restart():
                    srv.start()
                    restarted.set()

                threading.Thread(target=restart).start()
            yield f

    try:
        with RemoteRuntime(srv.url, in_flight=4, retry_s=90.0) as rt:
            got = [r.frame_index for _, r in rt.stream(frames())]
            stats = rt.stats()
        assert restarted.is_set()
        assert got == list(range(24)), stats  # every frame answered, in order
        assert stats["failed"] == [] and stats["reconnects"] >= 1 and stats["gap_s"] > 0
    finally:
        restarted.wait(120)
        srv.stop()


def test_a_stream_counts_the_frames_no_server_answered(clip):
    (dead,) = free_ports(1)
    with RemoteRuntime(f"127.0.0.1:{dead}", retry_s=0.5, down_s=0.1, timeout_s=1.0) as rt:
        got = list(rt.stream(clip[:3]))
        stats = rt.stats()
    assert got == [] and [i for i, _ in stats["failed"]] == [0, 1, 2]
    assert all("no server answered" in why for _, why in stats["failed"])


def test_settings_are_checked():
    from iared_edge.serve.server import ServerConfig, check_environment

    with pytest.raises(ValueError, match="grpc_port"):
        ServerConfig(grpc_port=0)
    with pytest.raises(ValueError, match="must differ"):
        ServerConfig(http_port=9000, grpc_port=9000, metrics_port=9002)
    with pytest.raises(ValueError, match="max_batch"):
        ServerConfig(max_batch=0)
    with pytest.raises(ValueError, match="host:port"):
        RemoteRuntime("localhost")
    with pytest.raises(ValueError, match="in_flight"):
        RemoteRuntime("localhost:1", in_flight=0)
    with pytest.raises(ValueError, match="down_s"):
        RemoteRuntime("localhost:1", down_s=0)
    with pytest.raises(ValueError, match="plain gRPC"):
        RemoteRuntime("http://localhost:8000")
    with pytest.raises(ValueError, match="1..65535"):
        RemoteRuntime("localhost:70000")
    with RemoteRuntime("grpc://localhost:8001/") as rt:
        assert rt.servers[0].url == "localhost:8001"
    check_environment()  # this environment serves


def test_numpy_2_is_refused_with_what_to_do(monkeypatch):
    from iared_edge.serve import server

    monkeypatch.setattr(server.np, "__version__", "2.4.6")
    with pytest.raises(RuntimeError, match="numpy < 2"):
        server.check_environment()


def test_decode_names_what_is_wrong():
    from PIL import Image

    with pytest.raises(FrameError, match="must be bytes"):
        decode_frame(12)
    buf = io.BytesIO()
    Image.new("RGB", (3, 1)).save(buf, "PNG")
    with pytest.raises(FrameError, match="too small"):
        decode_frame(buf.getvalue())
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    assert np.array_equal(decode_frame(encode_frame(rgb, color="rgb", encoding="png")), rgb)


def test_triton_repository_export_writes_parsed_configs(tmp_path):
    import onnx

    from iared_edge import load_model
    from iared_edge.serve.repository import check_model_config, export_triton_repository

    model = load_model("demo")
    names = export_triton_repository(model, str(tmp_path), levels=[0.7], max_batch=4)
    assert names == ["iared_keep0.70"]
    folder = tmp_path / names[0]
    parsed = check_model_config((folder / "config.pbtxt").read_text())
    assert parsed.backend == "onnxruntime" and parsed.max_batch_size == 4
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 2000
    assert parsed.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    assert [i.name for i in parsed.input] == [v.name for v in graph.input]
    assert [o.name for o in parsed.output] == [v.name for v in graph.output]
    assert list(parsed.input[0].dims) == list(model.input_size)
    labels = (folder / "labels.txt").read_text().splitlines()
    assert len(labels) == model.vit.num_classes
    with pytest.raises(ValueError, match="same model name twice"):
        export_triton_repository(model, str(tmp_path / "dup"), levels=[0.7, 0.701])
    with pytest.raises(ValueError, match="ModelConfig"):
        check_model_config('name: "x"\nmax_batch_size: "eight"\n')
    with torch.no_grad():
        assert model(torch.zeros(1, *model.input_size), policy="level", level=0.7).logits.shape[1] == len(labels)


def test_export_format_triton_on_the_command_line(tmp_path, capsys):
    from iared_edge.cli import main
    from iared_edge.serve.repository import check_model_config

    out = str(tmp_path / "repo")
    assert main(["export", "--model", "demo", "--format", "triton", "--keep-levels", "0.5", "--out-dir", out]) == 0
    assert "iared_keep0.50" in capsys.readouterr().out
    check_model_config(open(os.path.join(out, "iared_keep0.50", "config.pbtxt")).read())
    assert main(["export", "--model", "demo", "--format", "triton", "--policy", "threshold", "--out-dir", out]) == 2
    assert "--format triton writes float32 level graphs" in capsys.readouterr().err
