"""IA-RED² against two peers on the same backbone, side by side in one run: token merging (ToMe,
Bolya et al., ICLR 2023) and attentive-token keeping with fusion (EViT, Liang et al., ICLR 2022);
top-1 on held-out images, FLOPs and latency at batch 1 and 8.

EViT is applied training-free too: in blocks 4, 7 and 10 (its DeiT-S setting), after attention, the
patch tokens the class token attends to most (mean over heads) are kept, ceil(rate x n) of them, and
the rest are fused into one token (their average weighted by that attention), before the MLP
(`evit_block`); with rate 1 it is timm's forward.

ToMe is applied training-free, as its paper offers it: in every block, after attention, the r most
similar (token, token) pairs of a bipartite split are merged by a size-weighted average, and
attention is proportional to token size (log size added to the logits); the class token is never
merged. It is implemented here from the paper's algorithm (bipartite soft matching on the mean key
over heads) on timm's own block modules (`tome_forward`); with r = 0 it is timm's forward, checked
at start. It is not an SDK feature: a baseline for this comparison.

IA-RED² runs as shipped (policy "threshold"), and with policy "level" at the keep level whose FLOPs
match ToMe's most aggressive r, so accuracy and speed compare at equal FLOPs. The demo backbone was
fine-tuned under IA-RED²'s dropping, not under merging: that favours IA-RED², and is said beside the
table. FLOPs count every block's GEMMs and attention from the real token counts (ToMe's matching
included, IA-RED²'s interpreters included).

    .venv/bin/python benchmarks/bench_peers.py [--images 1000] [--time-images 48] [--repeats 7]
"""

import argparse
import math
import platform
import statistics

import torch
import torch.nn.functional as F

from iared_edge import load_model
from iared_edge.bench import timed_ms
from iared_edge.demo import DigitsInClutter
from iared_edge.preprocess import model_input


def bipartite_merge(x, size, metric, r):
    """ToMe's bipartite soft matching: tokens alternate into sets A (even) and B (odd); each A token
    finds its most similar B token (cosine of `metric`); the r best-matched A tokens are merged into
    theirs (sum of x * size, then divided by the summed size). Token 0 (class) is in A and never
    merged. x [B, N, C], size [B, N, 1], metric [B, N, D] -> [B, N - r, C], [B, N - r, 1]."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    scores[:, 0, :] = -math.inf  # the class token is never a source
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    unm_idx = unm_idx.sort(dim=1)[0]  # keep the order, so the class token stays first
    dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)

    def merge(t):
        src, dst = t[:, ::2], t[:, 1::2]
        c = t.shape[-1]
        unm = src.gather(1, unm_idx.expand(-1, -1, c))
        moved = src.gather(1, src_idx.expand(-1, -1, c))
        return torch.cat([unm, dst.scatter_reduce(1, dst_idx.expand(-1, -1, c), moved, reduce="sum")], 1)

    total = merge(size)
    return merge(x * size) / total, total


def tome_block(blk, x, size, r):
    """timm Block.forward with ToMe: proportional attention, then merge r tokens, then the MLP."""
    attn = blk.attn
    B, N, C = x.shape
    q, k, v = attn.qkv(blk.norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    # proportional attention: log(size) added to the logits, through torch's fused kernel
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=size.log()[:, None, None, :, 0])
    out = out.transpose(1, 2).reshape(B, N, C)
    x = x + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(attn.norm(out)))))
    if r > 0:
        x, size = bipartite_merge(x, size, k.mean(1), min(r, (N - 1) // 2))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))), size


EVIT_BLOCKS = (3, 6, 9)  # 0-based: EViT reorganises tokens in the 4th, 7th and 10th blocks


def evit_block(blk, x, rate):
    """timm Block.forward with EViT's token reorganisation between attention and the MLP."""
    attn = blk.attn
    B, N, C = x.shape
    q, k, v = attn.qkv(blk.norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # EViT needs the class row
    out = (weights @ v).transpose(1, 2).reshape(B, N, C)
    x = x + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(attn.norm(out)))))
    if rate < 1:
        cls_attn = weights[:, :, 0, 1:].mean(1)  # [B, N - 1]: the class token's attention to the others
        keep = math.ceil(rate * (N - 1))
        order = cls_attn.argsort(dim=1, descending=True)
        kept, rest = order[:, :keep], order[:, keep:]
        tokens = x[:, 1:]
        w = cls_attn.gather(1, rest)[..., None]
        fused = (tokens.gather(1, rest[..., None].expand(-1, -1, C)) * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        x = torch.cat([x[:, :1], tokens.gather(1, kept[..., None].expand(-1, -1, C)), fused], 1)
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def evit_forward(model, images, rate):
    """The backbone with EViT's reorganisation in EVIT_BLOCKS; -> (logits, (tokens into attention,
    tokens into the MLP) per block)."""
    x = model._embed(images)
    counts = []
    for i, blk in enumerate(model.vit.blocks):
        n = x.shape[1]
        x = evit_block(blk, x, rate if i in EVIT_BLOCKS else 1.0)
        counts.append((n, x.shape[1]))
    return model._head(x[:, : model.num_prefix]), counts


def tome_forward(model, images, r):
    """The IA-RED² model's timm backbone with ToMe in every block; -> (logits, (tokens into attention,
    tokens into the MLP) per block)."""
    x = model._embed(images)
    size = torch.ones(*x.shape[:2], 1, dtype=x.dtype, device=x.device)
    counts = []
    for blk in model.vit.blocks:
        n = x.shape[1]
        x, size = tome_block(blk, x, size, r)
        counts.append((n, x.shape[1]))
    return model._head(x[:, : model.num_prefix]), counts


def block_flops(n, C, hidden, n_mlp=None):
    """A timm block's FLOPs: attention (qkv, the quadratic term, projection) on n tokens, the MLP on
    n_mlp (the peers reduce tokens between the two; default n)."""
    n_mlp = n if n_mlp is None else n_mlp
    return 2 * n * C * 3 * C + 4 * n * n * C + 2 * n * C * C + 4 * n_mlp * C * hidden


def peer_flops(model, counts, matching: bool):
    """FLOPs per image of a peer's forward from its (attention, MLP) token counts per block, plus
    ToMe's matching (N/2 x N/2 similarities of the head-mean keys) and the stem and head as IA-RED²
    counts them."""
    vit = model.vit
    C, hidden = vit.embed_dim, vit.blocks[0].mlp.fc1.out_features
    total = sum(block_flops(n, C, hidden, m) for n, m in counts)
    total += sum(2 * (n // 2) * (n // 2) * C for n, _ in counts) if matching else 0
    plain_blocks = sum(block_flops(model.num_patches + model.num_prefix, C, hidden) for _ in counts)
    return total + model.flops()[0].item() - plain_blocks  # the stem and head, as in model.flops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--images", type=int, default=1000, help="held-out test images for top-1 (generator seed 1)")
    ap.add_argument("--time-images", type=int, default=48, help="of those, the ones timed")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rs", default="4,8,12,16", help="ToMe's r (tokens merged per block)")
    ap.add_argument("--rates", default="0.7,0.5", help="EViT's keep rates")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    imgs, labels, _ = DigitsInClutter("test", seed=1).batch(range(args.images))
    x = torch.cat([model_input(model, im) for im in imgs])
    y = torch.from_numpy(labels)
    rs = [int(r) for r in args.rs.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    with torch.inference_mode():
        ref = model.vit(x[:8])
        got, _ = tome_forward(model, x[:8], 0)
        assert (ref - got).abs().max().item() < 1e-4, "ToMe with r = 0 must be timm's forward"
        got, _ = evit_forward(model, x[:8], 1.0)
        assert (ref - got).abs().max().item() < 1e-4, "EViT with rate 1 must be timm's forward"
        e = model._embed(x[:2])  # merging keeps the tokens' total size and mass
        m, size = bipartite_merge(e, torch.ones(*e.shape[:2], 1), e[..., :16], 8)
        assert m.shape[1] == e.shape[1] - 8 and torch.allclose(size.sum(1), torch.full((2, 1), float(e.shape[1])))
        assert torch.allclose((m * size).sum(1), e.sum(1), atol=1e-3) and torch.equal(m[:, 0], e[:, 0])
        plain_flops = model.flops()[0].item()
        # IA-RED² at the keep level whose FLOPs match ToMe's largest r
        tome_max = peer_flops(model, tome_forward(model, x[:1], max(rs))[1], True)
        levels = [i / 100 for i in range(5, 101)]
        level = min(
            levels,
            key=lambda level: abs(
                model(x[:1], policy="level", level=model.stage_levels(level)).flops[0].item() - tome_max
            ),
        )
        variants = {
            "timm (every token)": lambda c: model.vit(c),
            "IA-RED², threshold 0.5 (as shipped)": lambda c: model(c, policy="threshold"),
            f"IA-RED², keep level {level:.2f} (ToMe r={max(rs)}'s FLOPs)": lambda c: model(
                c, policy="level", level=model.stage_levels(level)
            ),
        }
        for r in rs:
            variants[f"ToMe r={r}"] = lambda c, r=r: tome_forward(model, c, r)
        for rate in rates:
            variants[f"EViT keep rate {rate}"] = lambda c, rate=rate: evit_forward(model, c, rate)
        rows = {}
        for name, fn in variants.items():
            logits, flops = [], []
            for i in range(0, len(x), 50):
                c = x[i : i + 50]
                if name.startswith(("ToMe", "EViT")):
                    lg, counts = fn(c)
                    flops += [peer_flops(model, counts, name.startswith("ToMe"))] * len(c)
                elif name.startswith("timm"):
                    lg = model.vit(c)
                    flops += [plain_flops] * len(c)
                else:
                    out = fn(c)
                    lg = out.logits
                    flops += out.flops.tolist()
                logits.append(lg)
            rows[name] = {
                "top1": (torch.cat(logits).argmax(-1) == y).float().mean().item(),
                "flops_ratio": plain_flops / statistics.mean(flops),
            }
        t = x[: args.time_images]
        for bs in (1, 8):
            chunks = [t[i : i + bs] for i in range(0, len(t) - bs + 1, bs)]
            times = {name: [] for name in variants}
            for fn in variants.values():  # warm-up
                fn(chunks[0])
            for _ in range(args.repeats):
                for c in chunks:
                    for name, fn in variants.items():  # interleaved: load changes hit all alike
                        times[name].append(timed_ms(lambda: fn(c)))
            for name in variants:
                rows[name][bs] = statistics.median(times[name])
    print(
        f"# {args.model} model; top-1 on {args.images} held-out test images (generator seed 1); latency on the "
        f"first {args.time_images}, medians of {args.repeats} passes, all variants interleaved; torch "
        f"{torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}"
    )
    print("| method | FLOPs ratio (plain / method) | top-1 | batch 1 ms | speed-up | batch 8 ms | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = rows["timm (every token)"]
    for name, row in rows.items():
        print(
            f"| {name} | {row['flops_ratio']:.2f}x | {row['top1']:.1%} | {row[1]:.2f} | {base[1] / row[1]:.2f}x | "
            f"{row[8]:.2f} | {base[8] / row[8]:.2f}x |"
        )


if __name__ == "__main__":
    main()
