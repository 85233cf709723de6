"""The packed-token ops against the plain PyTorch way, side by side in one run, DeiT-S sized
(N = 197 tokens, C = 384, H = 6), float32.

Compaction: ours vs boolean-mask indexing (tokens[keep], with cumsum offsets) and vs
cumsum + index_select, bounded by a contiguous copy of the kept bytes (memcpy bandwidth).
Scoring: the fused kernel vs the unfused torch composition layer_norm + bmm + sigmoid + mean.

    .venv/bin/python benchmarks/bench_ops.py [--threads 2]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from iared_edge import ops
from iared_edge.ops import reference


def median_us(fn, repeats=200):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def torch_mask_compact(tokens, offsets, positions, keep):
    keep = keep | (positions == 0)
    seq = ops.sequence_ids(offsets, tokens.shape[0])
    counts = torch.bincount(seq[keep], minlength=offsets.numel() - 1)
    new_offsets = torch.cat([offsets.new_zeros(1), counts.cumsum(0).int()])
    return tokens[keep], new_offsets, positions[keep]


def torch_select_compact_out(tokens, offsets, positions, keep, out):
    keep = keep | (positions == 0)
    seq = ops.sequence_ids(offsets, tokens.shape[0])
    counts = torch.zeros(offsets.numel() - 1, dtype=torch.int64).index_add_(0, seq, keep.long())
    new_offsets = torch.cat([offsets.new_zeros(1), counts.cumsum(0).int()])
    index = keep.nonzero().squeeze(1)
    return torch.index_select(tokens, 0, index, out=out[: index.numel()]), new_offsets, positions[index]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    N, C, H = 197, 384, 6
    print(
        f"# torch {torch.__version__}, {args.threads} threads, float32, N={N}, C={C}, H={H}; medians; ops backend {ops.backend('cpu')}"
    )
    print("\n## Compaction\n")
    print("New output buffers, as each call allocates (fresh pages are costly where page faults are):\n")
    print("| B | keep | ours µs | bool-mask µs | cumsum+index_select µs | vs bool-mask | vs index_select |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    g = torch.Generator().manual_seed(0)
    for B in (1, 8, 64):
        tokens = torch.randn(B * N, C, generator=g)
        offsets = torch.arange(0, (B + 1) * N, N, dtype=torch.int32)
        positions = torch.arange(N, dtype=torch.int32).repeat(B)
        for frac in (0.3, 0.6, 0.9):
            keep = torch.rand(B * N, generator=g) < frac
            kept = int((keep | (positions == 0)).sum())
            buf, dst, src = torch.empty(B * N, C), torch.empty(kept, C), tokens[:kept].clone()
            t_ours = median_us(lambda: ops.compact(tokens, offsets, positions, keep))
            t_mask = median_us(lambda: torch_mask_compact(tokens, offsets, positions, keep))
            t_sel = median_us(lambda: reference.compact(tokens, offsets, positions, keep))
            print(
                f"| {B} | {frac:.0%} | {t_ours:.1f} | {t_mask:.1f} | {t_sel:.1f} | {t_mask / t_ours:.2f}x | {t_sel / t_ours:.2f}x |",
                flush=True,
            )
            # reused buffers: ours with out=, torch's index_select with out=, and memcpy
            t_ours_out = median_us(lambda: ops.compact(tokens, offsets, positions, keep, out=buf))
            t_sel_out = median_us(lambda: torch_select_compact_out(tokens, offsets, positions, keep, dst))
            t_copy = median_us(lambda: dst.copy_(src))
            rows.append(
                f"| {B} | {frac:.0%} | {t_ours_out:.1f} | {t_sel_out:.1f} | {t_copy:.1f} | "
                f"{t_sel_out / t_ours_out:.2f}x | {100 * t_copy / t_ours_out:.0f}% |"
            )
    print(
        "\nReused output buffers (ours with out=; torch: cumsum + index_select(out=); "
        "memcpy: a contiguous copy of the kept bytes into a buffer):\n"
    )
    print(
        "| B | keep | ours µs | index_select(out=) µs | memcpy of kept bytes µs | vs index_select | % of memcpy bandwidth |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    # What any call costs before a byte moves, for one image: our op with nothing to move (only the
    # class token kept), and one trivial registered ATen op called the same way (torch.ops).
    tokens, offsets = torch.randn(N, C, generator=g), torch.tensor([0, N], dtype=torch.int32)
    positions, nothing, buf = torch.arange(N, dtype=torch.int32), torch.zeros(N, dtype=torch.bool), torch.empty(N, C)
    one, two = torch.randn(1), torch.randn(1)
    t_empty = median_us(lambda: ops.compact(tokens, offsets, positions, nothing, out=buf))
    t_add = median_us(lambda: torch.ops.aten.add.Tensor(one, two))
    print(
        f"\nFixed cost per call (B = 1): ours with only the class token kept {t_empty:.1f} µs; "
        f"a one-element torch.ops.aten.add {t_add:.1f} µs."
    )
    print("\n## Interpreter scoring\n")
    print("| B | dtype | fused µs | unfused torch µs | speedup |")
    print("|---|---|---|---|---|")
    for B in (1, 8, 64):
        for dtype in (torch.float32, torch.bfloat16):
            tokens = torch.randn(B * N, C, generator=g).to(dtype)
            offsets = torch.arange(0, (B + 1) * N, N, dtype=torch.int32)
            vecs, biases = torch.randn(B, H, C, generator=g) * 0.05, torch.randn(B, H, generator=g)

            def unfused():
                xn = F.layer_norm(tokens.view(B, N, C).float(), (C,), eps=1e-6)
                return torch.sigmoid(torch.baddbmm(biases[:, None, :], xn, vecs.transpose(1, 2))).mean(-1)

            fused = lambda: ops.interpreter_scores(tokens, offsets, vecs, biases)
            assert torch.allclose(fused()[0], unfused().flatten(), atol=1e-5)
            t_f, t_u = median_us(fused), median_us(unfused)
            print(f"| {B} | {str(dtype).split('.')[1]} | {t_f:.1f} | {t_u:.1f} | {t_u / t_f:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
