"""int8 ONNX Runtime graphs against float32 ones and the torch backend, side by side (CPU).

    .venv/bin/python benchmarks/bench_int8.py [--models demo,deit_small_patch16_224]
                                              [--levels threshold,1.0,0.5] [--repeats 11] [--accuracy-images 1000]

Per model, policy and batch size: the PyTorch packed forward (float32), ONNX Runtime's float32
graph and its int8 graph (`export_onnx(..., int8=True)`, or `export_onnx_threshold` for policy
"threshold", whose graph takes one image per run: a batch runs image by image), each batch timed
in the three back to back (medians). A level is policy "level" at that keep level; "threshold"
is the model's own thresholds (each image keeps its own tokens; the mean per stage is shown). The bound int8 is judged against: the quantized GEMMs'
share f of the graph's FLOPs at that keep level, at most 4x faster each (VNNI's int8 dot product
does four multiply-adds per 32-bit lane where an FMA does one), so at most 1 / ((1 - f) + f / 4)
over float32. Accuracy (the demo model, real weights): top-1 on held-out test images of the demo
task, int8 against float32, how often they agree, and the heatmap's pointing game (its peak on the
digit's box) in both. A timm name runs with random weights: speed
only.
"""

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch

from iared_edge import IARedViT, load_model
from iared_edge.bench import device_name, timed_ms, timing_session
from iared_edge.export import export_onnx, export_onnx_threshold, keep_counts_for
from iared_edge.preprocess import model_input


def gemm_share(model, counts) -> float:
    """Share of the FLOPs (`model.flops`, interpreters included) in the int8 GEMMs: every block's
    qkv, projection and MLP, and the head, at these per-stage patch counts."""
    vit, P = model.vit, model.num_prefix
    C, hidden = vit.embed_dim, vit.blocks[0].mlp.fc1.out_features
    per_token = 2 * C * 3 * C + 2 * C * C + 4 * C * hidden
    gemm = sum(g * (n + P) * per_token for g, n in zip(model.groups, counts)) + 2 * C * vit.num_classes
    return gemm / model.flops(torch.tensor([counts]))[0].item()


def demo_images(model, n: int):
    """n held-out demo-task test images as model inputs, their labels, and each digit's patch
    overlap (for the pointing game)."""
    from iared_edge.demo import DigitsInClutter
    from iared_edge.explain import box_overlap, map_box
    from iared_edge.preprocess import model_normalization

    imgs, labels, boxes = DigitsInClutter("test", seed=0).batch(range(n))
    crop = model_normalization(model)[2]
    size = tuple(model.input_size[1:])
    patch = tuple(model.vit.patch_embed.patch_size)
    overlaps = [box_overlap(map_box(b, im.shape[:2], size, crop), model.grid_size, patch) for im, b in zip(imgs, boxes)]
    return torch.cat([model_input(model, im) for im in imgs]), np.asarray(labels), overlaps


def pointing(heatmaps, overlaps) -> float:
    from iared_edge.explain import pointing_hit

    return float(np.mean([pointing_hit(torch.as_tensor(h), ov) for h, ov in zip(heatmaps, overlaps)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="demo,deit_small_patch16_224")
    ap.add_argument("--levels", default="threshold,1.0,0.5")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accuracy-images", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="bench-int8-")
    print(
        f"# {device_name(torch.device('cpu'), args.threads)}; onnxruntime {ort.__version__}, torch {torch.__version__}; "
        f"medians of {args.repeats}, the three timed back to back per batch"
    )
    print(
        "| model | policy / keep level | patches kept per stage | batch | torch fp32 ms | ORT fp32 ms | ORT int8 ms | "
        "int8 over ORT fp32 | bound (GEMM share f) | int8 over torch fp32 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    accuracy = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = (
            (load_model(name) if name == "demo" or name.endswith(".safetensors") else IARedViT.from_timm(name))
            .float()
            .eval()
        )
        real = name == "demo"
        x_all, labels, overlaps = (
            demo_images(model, max(args.accuracy_images, 8))
            if real
            else (torch.randn(8, *model.input_size), None, None)
        )
        for level in args.levels.split(","):
            threshold = level == "threshold"
            paths = {k: os.path.join(tmp, f"{k}.onnx") for k in ("fp32", "int8")}
            if threshold:
                kwargs = {"policy": "threshold"}
                for k in paths:
                    export_onnx_threshold(model, paths[k], int8=k == "int8")
            else:
                kwargs = {"policy": "level", "level": model.stage_levels(float(level))}
                counts = keep_counts_for(model, kwargs["level"])
                for k in paths:
                    export_onnx(model, paths[k], kwargs["level"], int8=k == "int8")
            sess = {k: timing_session(p, args.threads) for k, p in paths.items()}

            def ort_run(k, x, heatmaps=False):  # logits (and heatmaps); the threshold graph takes one image per run
                outs = (
                    [sess[k].run(None, {"images": x[i : i + 1].numpy()}) for i in range(len(x))]
                    if threshold
                    else [sess[k].run(None, {"images": x.numpy()})]
                )
                logits = np.concatenate([o[0] for o in outs])
                return (logits, np.concatenate([o[-1] for o in outs])) if heatmaps else logits

            for bs in (1, 8):
                x = x_all[:bs]
                if threshold:  # what these images keep, on average
                    with torch.inference_mode():
                        counts = model(x, **kwargs).kept_counts.double().mean(0).tolist()
                f = gemm_share(model, counts)
                bound = 1 / ((1 - f) + f / 4)
                runs = {
                    "torch": lambda: model(x, **kwargs),
                    "fp32": lambda: ort_run("fp32", x),
                    "int8": lambda: ort_run("int8", x),
                }
                t = {k: [] for k in runs}
                with torch.inference_mode():
                    for fn in runs.values():  # warm-up
                        fn(), fn()
                    for _ in range(args.repeats):
                        for k, fn in runs.items():
                            t[k].append(timed_ms(fn))
                ms = {k: statistics.median(v) for k, v in t.items()}
                print(
                    f"| {name} | {level} | {' / '.join(f'{c:.0f}' for c in counts)} | {bs} | {ms['torch']:.1f} | "
                    f"{ms['fp32']:.1f} | {ms['int8']:.1f} | {ms['fp32'] / ms['int8']:.2f}x | "
                    f"{bound:.2f}x ({f:.2f}) | {ms['torch'] / ms['int8']:.2f}x |",
                    flush=True,
                )
            if real:
                n = args.accuracy_images
                with torch.inference_mode():
                    outs = [model(x_all[i : i + 50], **kwargs) for i in range(0, n, 50)]
                ref = torch.cat([o.logits for o in outs]).argmax(1).numpy()
                heat32 = torch.cat([o.heatmap for o in outs]).numpy()
                runs8 = [ort_run("int8", x_all[i : i + 50], heatmaps=True) for i in range(0, n, 50)]
                top8 = np.concatenate([r[0] for r in runs8]).argmax(1)
                heat8 = np.concatenate([r[1] for r in runs8])
                accuracy.append(
                    (
                        name,
                        level,
                        n,
                        (ref == labels[:n]).mean(),
                        (top8 == labels[:n]).mean(),
                        (ref == top8).mean(),
                        pointing(heat32, overlaps[:n]),
                        pointing(heat8, overlaps[:n]),
                        float(np.abs(heat8 - heat32).mean()),
                    )
                )
    if accuracy:
        print(
            "\n| model | policy / keep level | test images | top-1 fp32 (torch) | top-1 int8 (ORT) | top-1 agreement | "
            "pointing game fp32 | pointing game int8 | mean abs. heatmap difference |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, level, n, a32, a8, agree, p32, p8, dh in accuracy:
            print(f"| {name} | {level} | {n} | {a32:.1%} | {a8:.1%} | {agree:.1%} | {p32:.1%} | {p8:.1%} | {dh:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
