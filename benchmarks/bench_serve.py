"""Many cameras, one server: `iared-edge serve` (Triton, loopback) against one local Runtime.

1. Load: N camera clients (RemoteRuntime, frames in flight) x F frames of the bundled clip,
   concurrently; throughput, round-trip p50/p99, the mean batch Triton formed (its statistics
   endpoint), and every client's answers in order (none lost, duplicated or misordered).
2. The same N x F frames through one local Runtime, frame by frame: throughput side by side.
3. Answers: every distinct frame the clients sent, against the local Runtime on the same decoded
   frame (JPEG is lossy): labels identical, logits within 1e-4, kept counts per stage identical.
4. Soak (--soak N): N frames through the server; its RSS (serve + tritonserver + the Python
   backend stub) at frame 1,000 and at the end; judged: growth under 5%.

    .venv/bin/python benchmarks/bench_serve.py [--clients 8] [--frames 200] [--soak 10000]
"""

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np

from iared_edge import Runtime
from iared_edge.demo.clip import DEMO_CLIP
from iared_edge.serve import RemoteRuntime
from iared_edge.serve.process import ServerProcess
from iared_edge.serve.protocol import decode_frame, encode_frame


def clip_frames():
    import cv2

    cap = cv2.VideoCapture(DEMO_CLIP)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants (MB), from /proc."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def batch_stats(url: str):
    """(inferences, executions) Triton counted for model iared."""
    from tritonclient.grpc import InferenceServerClient

    c = InferenceServerClient(url)
    try:
        s = c.get_inference_statistics("iared").model_stats[0]
        return s.inference_count, s.execution_count
    finally:
        c.close()


def cameras(url: str, frames, clients: int, per_client: int, in_flight: int):
    """Each client streams its frames; returns (per-client [(sent index, result)], stats, wall s)."""
    got, stats = [None] * clients, [None] * clients

    def camera(c):
        mine = [(c + i * clients) % len(frames) for i in range(per_client)]
        with RemoteRuntime(url, in_flight=in_flight) as rt:
            out = []
            for (frame, res), i in zip(rt.stream(frames[j] for j in mine), mine):
                out.append((i, frame is frames[i], res))
            got[c], stats[c] = out, rt.stats()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=camera, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got, stats, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--frames", type=int, default=200, help="frames per client")
    ap.add_argument("--in-flight", type=int, default=2, help="frames each client keeps sent ahead")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--soak", type=int, default=10000, help="frames through the server for the RSS check (0: none)")
    ap.add_argument("--log", default="runs/bench_serve_server.log")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(args.log) or ".", exist_ok=True)
    frames = clip_frames()
    n = args.clients * args.frames
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; demo model, policy threshold")
    server = ServerProcess(["--model", "demo", "--max-batch", str(args.max_batch)], log_path=args.log).start()
    try:
        # 1. load
        cameras(server.url, frames[:4], 2, 4, args.in_flight)  # warm up
        inf0, exe0 = batch_stats(server.url)
        got, stats, wall = cameras(server.url, frames, args.clients, args.frames, args.in_flight)
        inf1, exe1 = batch_stats(server.url)
        lat = np.concatenate([[r.latency_ms["total"] for _, _, r in g] for g in got])
        in_order = all([r.frame_index for _, _, r in g] == list(range(args.frames)) for g in got)
        same = all(ok for g in got for _, ok, _ in g)
        lost = sum(args.frames - len(g) for g in got)
        failed = sum(len(s["failed"]) + len(s["skipped"]) for s in stats)
        server_fps = n / wall
        mean_batch = (inf1 - inf0) / max(exe1 - exe0, 1)
        # 2. one local Runtime, frame by frame, the same frames
        with Runtime("demo", device="cpu") as local:
            local(frames[0])
            t0 = time.perf_counter()
            for c in range(args.clients):
                for i in range(args.frames):
                    local(frames[(c + i * args.clients) % len(frames)])
            local_fps = n / (time.perf_counter() - t0)
            # 3. answers on the decoded frames
            sent = sorted({i for g in got for i, _, _ in g})
            mismatched_labels = worst_logit = mismatched_counts = 0
            with RemoteRuntime(server.url) as rt:
                for i in sent:
                    payload = encode_frame(frames[i])
                    outs, _, _ = rt._send(payload)
                    out, _ = local.forward_frames([decode_frame(payload)], color="rgb")
                    logits = out.logits[0].numpy()
                    counts = out.keep_masks[0].sum(-1).numpy()
                    mismatched_labels += int(np.argmax(logits) != int(outs["indices"][0, 0]))
                    worst_logit = max(worst_logit, float(np.abs(outs["logits"][0] - logits).max()))
                    mismatched_counts += int(not np.array_equal(outs["kept_counts"][0], counts))
        print("\n| clients x frames | server fps | local Runtime fps | server / local | p50 ms | p99 ms | mean batch |")
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {args.clients} x {args.frames} | {server_fps:.1f} | {local_fps:.1f} | {server_fps / local_fps:.2f}x "
            f"| {np.percentile(lat, 50):.1f} | {np.percentile(lat, 99):.1f} | {mean_batch:.2f} |"
        )
        print(
            f"\nframes answered {n - lost} of {n}; in order per client: {in_order}; each answer for the frame sent: "
            f"{same}; failed or skipped: {failed}"
        )
        print(
            f"answers on {len(sent)} distinct decoded frames: labels differing {mismatched_labels}, "
            f"max |logit difference| {worst_logit:.2e} (bound 1e-4), kept counts differing {mismatched_counts}"
        )
        # 4. soak
        if args.soak:
            clients = 4
            per = args.soak // clients
            marks = {}

            def watch():
                while "end" not in marks:
                    done = batch_stats(server.url)[0] - soak0
                    if done >= 1000 and "1000" not in marks:
                        marks["1000"] = tree_rss_mb(server.proc.pid)
                    time.sleep(0.5)

            soak0 = batch_stats(server.url)[0]
            w = threading.Thread(target=watch)
            w.start()
            got, stats, wall = cameras(server.url, frames, clients, per, args.in_flight)
            marks["end"] = tree_rss_mb(server.proc.pid)
            w.join()
            answered = sum(len(g) for g in got)
            growth = marks["end"] / marks["1000"] - 1
            print(
                f"\nsoak: {answered} frames in {wall:.0f} s ({answered / wall:.1f} fps); server RSS (serve + tritonserver "
                f"+ stub) {marks['1000']:.0f} MB at frame 1,000, {marks['end']:.0f} MB at frame {answered}: "
                f"{growth:+.1%} (bound < 5%)"
            )
    finally:
        rc = server.stop()
        print(f"\nserver stopped with SIGTERM: exit status {rc}")


if __name__ == "__main__":
    sys.exit(main())
