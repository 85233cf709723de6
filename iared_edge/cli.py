"""The `iared-edge` command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import __version__
from .checkpoint import names_saved_model, resolve_model
from .devices import AMP_CHOICES, PRECISIONS, RUNTIME_PRECISIONS, autocast_dtype, inference_dtype
from .preprocess import find_images

MODEL_HELP = 'a timm name, a saved .safetensors, or "demo" (the bundled digits model)'


def heatmap_names(paths: List[str]) -> List[str]:
    """One PNG name per image: its file name's stem, made unique with -2, -3, ... where stems repeat."""
    names, seen = [], {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from . import ops
    from .preprocess import ASSETS, load_rgb, model_input, model_normalization, overlay

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    paths = [p for item in args.images for p in (find_images(item) if os.path.isdir(item) else [item])]
    paths = paths or [os.path.join(ASSETS, "squirrel_cls.jpg")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"no such image file: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    # one image: a bad one fails before the model is built; several: read a batch at a time (a
    # folder may not fit in memory), an unreadable one skipped and reported, the rest go on
    first_rgb = {paths[0]: load_rgb(paths[0])} if len(paths) == 1 else {}
    if len(paths) == 1:
        outs = [args.out or "heatmap.png"]
    else:  # one PNG per image in a folder
        os.makedirs(args.out or "heatmaps", exist_ok=True)
        outs = [os.path.join(args.out or "heatmaps", n) for n in heatmap_names(paths)]
    torch.manual_seed(args.seed)
    model = resolve_model(args.model, args.checkpoint)
    if args.precision is not None:
        model = model.to(inference_dtype("cpu", args.precision))
    if args.checkpoint is None and not names_saved_model(args.model):
        print(
            f"note: {args.model} has random weights (no --checkpoint): the labels below are "
            "meaningless, the token dropping and timings are real"
        )
    print(
        f"model: {args.model}  policy: {args.policy}  weights: "
        f"{str(next(model.parameters()).dtype).replace('torch.', '')}  ops backend: {ops.backend('cpu')}"
    )
    labels = model.class_names()
    mean, std, _ = model_normalization(model)
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    kwargs = {"level": args.level} if args.policy == "level" else {}
    full = model.flops()[0].item()
    skipped = []
    for first in range(0, len(paths), args.batch):  # a batch's images each keep their own tokens
        chunk, xs = [], []
        for path, dest in zip(paths[first : first + args.batch], outs[first : first + args.batch]):
            try:
                xs.append(model_input(model, first_rgb.pop(path) if path in first_rgb else load_rgb(path)))
                chunk.append((path, dest))
            except ValueError as exc:
                skipped.append(path)
                print(f"skipped: {exc}", file=sys.stderr)
        if not chunk:
            continue
        x = torch.cat(xs)
        with torch.inference_mode():
            out = model(x, policy=args.policy, **kwargs)
        for i, (path, dest) in enumerate(chunk):
            top = out.logits[i].float().softmax(-1).topk(min(5, out.logits.shape[-1]))
            levels = ", ".join(f"{r:.0%}" for r in out.keep_ratio[i].tolist())
            flops = out.flops[i].item()
            print(f"{path}:")
            for p, c in zip(top.values.tolist(), top.indices.tolist()):
                print(f"  {p:6.2%}  {labels[c]}")
            print(
                f"  patch tokens kept per stage: {levels}; FLOPs {flops / 1e9:.2f} G vs {full / 1e9:.2f} G "
                f"for the plain backbone ({full / flops:.2f}x fewer)"
            )
            crop = ((x[i].float() * std + mean).clamp(0, 1) * 255).permute(1, 2, 0).byte().numpy()
            pic = overlay(crop, out.heatmap[i].float().numpy(), out.keep_masks[i, -1].view(model.grid_size).numpy())
            Image.fromarray(np.concatenate([crop, pic], 1)).save(dest)
    done = len(paths) - len(skipped)
    where = (
        f"heatmap written to {outs[0]}" if len(outs) == 1 else f"{done} heatmaps written to {os.path.dirname(outs[0])}/"
    )
    print(f"{where} (left: input, right: interpreter heatmap, dropped patches greyed)")
    if skipped:
        print(f"iared-edge: {len(skipped)} of {len(paths)} images unreadable, skipped", file=sys.stderr)
        return 1
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import save_model
    from .preprocess import load_rgb, model_input
    from .train import calibrate_thresholds

    if not 0 < args.keep <= 1:
        raise ValueError(f"--keep must be in (0, 1], got {args.keep}")
    if args.limit < 1 or args.batch < 1:
        raise ValueError(f"--limit and --batch must be >= 1, got {args.limit} and {args.batch}")
    if not os.path.isdir(args.images):
        raise FileNotFoundError(f"no such image folder: {args.images}")
    model = resolve_model(args.model, args.checkpoint)
    paths = find_images(args.images)[: args.limit]
    tensors = [model_input(model, load_rgb(p)) for p in paths]
    batches = [torch.cat(tensors[i : i + args.batch]) for i in range(0, len(tensors), args.batch)]
    thresholds = calibrate_thresholds(model, batches, args.keep, shape=args.shape)
    out = args.out or (args.model if args.model.endswith(".safetensors") else "calibrated.safetensors")
    save_model(model, out)
    print(
        f"thresholds per stage: {', '.join(f'{t:.4f}' for t in thresholds)} (target keep {args.keep:.0%} "
        f"over {len(paths)} images); saved to {out}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json

    import torch
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    from .checkpoint import save_model
    from .train import ReinforceConfig, finetune_backbone, train_interpreters
    from .train import distributed as dist

    device = dist.setup(args.device)  # joins the process group under torchrun
    model = resolve_model(args.model, args.checkpoint)
    cfg = dict(resolve_data_config({}, model=model.vit), input_size=model.input_size)
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(args.data, split)):
            raise ValueError(f"{args.data}: expected ImageFolder splits train/ and val/ (missing {split}/)")
    train = ImageFolder(os.path.join(args.data, "train"), create_transform(**cfg, is_training=True))
    val = ImageFolder(os.path.join(args.data, "val"), create_transform(**cfg))
    if model.vit.num_classes != len(train.classes):
        raise ValueError(f"the model has {model.vit.num_classes} classes, {args.data}/train has {len(train.classes)}")
    model.labels = list(train.classes)
    sampler = (
        torch.utils.data.DistributedSampler(train, seed=args.seed, drop_last=True) if dist.world_size() > 1 else None
    )
    loader = torch.utils.data.DataLoader(
        train, batch_size=args.batch, shuffle=sampler is None, sampler=sampler, num_workers=args.workers, drop_last=True
    )
    val_loader = torch.utils.data.DataLoader(val, batch_size=args.batch, num_workers=args.workers)
    amp = autocast_dtype(device, args.amp)
    history = train_interpreters(
        model,
        loader,
        val_loader,
        steps_per_stage=args.steps,
        lr=args.lr,
        config=ReinforceConfig(penalty=args.penalty),
        checkpoint=os.path.join(args.out_dir, "interpreters.pt"),
        val_every=args.val_every,
        device=device,
        amp=amp,
        seed=args.seed,
    )
    if args.finetune_steps:
        history += finetune_backbone(
            model,
            loader,
            val_loader,
            steps=args.finetune_steps,
            lr=args.finetune_lr,
            alpha=args.alpha,
            checkpoint=os.path.join(args.out_dir, "finetune.pt"),
            val_every=args.val_every,
            device=device,
            amp=amp,
            seed=args.seed,
        )
    if dist.is_main():
        save_model(model.cpu(), os.path.join(args.out_dir, "model.safetensors"))
        with open(os.path.join(args.out_dir, "history.json"), "w") as f:
            json.dump(history, f)
        last = [h for h in history if "val_accuracy" in h][-1]
        print(
            f"done: val accuracy {last['val_accuracy']:.2%}, keep per stage "
            + "/".join(f"{last[f'val_keep{s + 1}']:.2f}" for s in range(model.num_stages))
            + f"; saved {args.out_dir}/model.safetensors"
        )
    dist.cleanup()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from .export import export_onnx, export_onnx_counts, export_onnx_threshold, keep_counts_for

    if args.policy == "threshold" and args.keep_counts_input:
        raise ValueError("--keep-counts-input is a form of the level graphs, not of --policy threshold")
    model = resolve_model(args.model, args.checkpoint).eval()
    try:
        levels = [float(v) for v in args.keep_levels.split(",")]
    except ValueError:
        raise ValueError(
            f"--keep-levels: expected comma-separated numbers in [0, 1], got {args.keep_levels!r}"
        ) from None
    if args.format == "triton":
        from .serve.repository import export_triton_repository

        if args.policy != "level" or args.keep_counts_input or args.precision != "fp32":
            raise ValueError(
                "--format triton writes float32 level graphs (dynamic batch): no --policy threshold, "
                "--keep-counts-input or --precision int8"
            )
        names = export_triton_repository(model, args.out_dir, levels, max_batch=args.max_batch, opset=args.opset)
        print(
            f"wrote a Triton model repository in {args.out_dir}: {', '.join(names)} (ONNX Runtime backend, "
            f"dynamic batching up to {args.max_batch}, TensorRT fp16 on GPUs; each config.pbtxt parsed)"
        )
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    int8 = args.precision == "int8"
    suffix, weights = (".int8", "; int8 weights") if int8 else ("", "")
    if args.policy == "threshold":
        path = os.path.join(args.out_dir, f"threshold{suffix}.onnx")
        export_onnx_threshold(model, path, opset=args.opset, int8=int8)
        print(
            f"wrote {path} (policy threshold at {', '.join(f'{t:g}' for t in model.thresholds)} per stage: "
            f"each image keeps its own tokens; input images [1, {', '.join(map(str, model.input_size))}]{weights})"
        )
        return 0
    if args.keep_counts_input:
        path = os.path.join(args.out_dir, f"keep_counts{suffix}.onnx")
        export_onnx_counts(model, path, opset=args.opset, int8=int8)
        table = {f"{level:.2f}": keep_counts_for(model, model.stage_levels(level)) for level in levels}
        with open(os.path.join(args.out_dir, "keep_levels.json"), "w") as f:
            json.dump(table, f, indent=1)
        print(
            f"wrote {path} (inputs images and keep_counts int64 [{model.num_stages}]; dynamic batch{weights}) and "
            f"keep_levels.json: " + ", ".join(f"{k} -> {v}" for k, v in table.items())
        )
        return 0
    for level in levels:
        path = os.path.join(args.out_dir, f"keep{level:.2f}{suffix}.onnx")
        per_stage = model.stage_levels(level)
        export_onnx(model, path, per_stage, opset=args.opset, int8=int8)
        print(
            f"wrote {path} (keep level {level}: {', '.join(f'{r:.3f}' for r in per_stage)} per stage, "
            f"dynamic batch{weights})"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from .runtime import RuntimeConfig
    from .serve.server import ServerConfig, bound_memory, serve

    bound_memory()  # before the model is loaded: oneDNN reads its cache size once

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.budget_ms is not None:
        raise ValueError("serve runs without --budget-ms (Triton batches the frames)")
    server = ServerConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        address=args.address,
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
    )
    model = resolve_model(args.model)
    if args.thresholds is not None:
        from .model import _per_stage

        try:
            values = [float(v) for v in args.thresholds.split(",")]
        except ValueError:
            raise ValueError(f"--thresholds: comma-separated numbers in [0, 1], got {args.thresholds!r}") from None
        model.thresholds = _per_stage(values if len(values) > 1 else values[0], model.num_stages, "thresholds")
    serve(model, RuntimeConfig.from_args(args), server)
    return 0


def cmd_make_digits(args: argparse.Namespace) -> int:
    from .demo import write_dataset

    sizes = {"train": args.train, "val": args.val, "test": args.test}
    write_dataset(
        args.out,
        sizes={k: v for k, v in sizes.items() if v != 0},
        seed=args.seed,
        clutter=args.clutter,
        progress=not args.quiet,
    )
    print(
        f"wrote {args.out}: "
        + ", ".join(f"{k} {v}" for k, v in sizes.items() if v > 0)
        + f" images; boxes in {os.path.join(args.out, 'boxes.json')}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .explain import evaluate_boxes, markdown_table, write_report

    torch.manual_seed(args.seed)
    model = resolve_model(args.model, args.checkpoint).eval()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    summary = evaluate_boxes(
        model,
        args.data,
        split=args.split,
        limit=args.limit,
        methods=methods,
        curve_images=args.curve_images,
        progress=not args.quiet,
    )
    print(markdown_table(summary))
    if args.out:
        paths = write_report(summary, args.out)
        print("wrote " + ", ".join(paths))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from . import ops
    from .bench import bench_images, compare_speed, compare_speed_onnx, device_name, markdown
    from .devices import resolve_device

    onnx = args.backend == "onnxruntime"
    if onnx and args.precision not in (None, "fp32", "int8"):
        raise ValueError(
            f"--backend onnxruntime runs float32 or int8 graphs: --precision fp32 or int8, not {args.precision}"
        )
    if not onnx and args.precision == "int8":
        raise ValueError("--precision int8 runs int8 ONNX Runtime graphs: add --backend onnxruntime")
    if onnx and args.device not in ("auto", "cpu"):
        raise ValueError(f"--backend onnxruntime times ONNX Runtime on the CPU: --device cpu, not {args.device}")

    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise ValueError(f"--batch: expected comma-separated integers, got {args.batch!r}") from None
    if min(batches) < 1 or args.count < max(batches):
        raise ValueError(f"--batch sizes must be >= 1 and at most --count ({args.count}), got {args.batch}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.images is not None and not os.path.isdir(args.images):
        raise FileNotFoundError(f"no such image folder: {args.images}")
    device = resolve_device("cpu" if onnx else args.device)
    torch.manual_seed(args.seed)
    model = resolve_model(args.model, args.checkpoint).eval()
    if onnx:  # compare_speed_onnx exports float32 graphs on the CPU from the model as it is
        import onnxruntime

        dtype = args.precision or "fp32"
        runs_on = f"onnxruntime {onnxruntime.__version__} (CPU)"
    else:
        if args.precision is not None:
            model = model.to(inference_dtype(device, args.precision))
        model = model.to(device)
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        runs_on = f"torch {torch.__version__}, ops backend {ops.backend(device.type)}"
    x, what = bench_images(model, args.count, args.images)
    print(f"model: {args.model}  device: {device_name(device)}  weights: {dtype}  {runs_on}")
    print(
        f"policy: {args.policy}{f' {args.level}' if args.policy == 'level' else ''}  {args.count} images: "
        f"{what}; medians of {args.repeats} passes, plain and IA-RED² timed back to back"
        + (
            "; the thresholds' graph takes one image per run (a batch is that many runs)"
            if onnx and args.policy == "threshold"
            else ""
        )
    )
    if args.checkpoint is None and not names_saved_model(args.model):
        print(
            f"note: {args.model} has random weights (no --checkpoint): what its interpreters keep is not what "
            "trained ones keep; the timings of those token counts are real"
        )
    if onnx:
        rows = compare_speed_onnx(
            model,
            x,
            batches,
            policy=args.policy,
            level=args.level,
            repeats=args.repeats,
            int8=dtype == "int8",
            threads=args.threads,
        )
    else:
        rows = compare_speed(model, x, batches, policy=args.policy, level=args.level, repeats=args.repeats)
    print(markdown(rows))
    print(f"IA-RED²'s top-1 equals the plain backbone's on {rows[0]['top1_agreement']:.1%} of the images")
    if onnx:
        print(
            f"the IA-RED² graph's top-1 ({dtype}) equals the float32 PyTorch model's on "
            f"{rows[0]['top1_agreement_with_pytorch']:.1%} of the images"
        )
    slower = [r["batch"] for r in rows if r["speedup"] < 1]
    if slower:
        print(
            f"warning: IA-RED² was slower than the plain backbone at batch {', '.join(map(str, slower))} here",
            file=sys.stderr,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "model": args.model,
                    "device": device_name(device),
                    "weights": dtype,
                    "torch": torch.__version__,
                    "backend": runs_on,
                    "ops_backend": ops.backend(device.type),
                    "policy": args.policy,
                    "level": args.level if args.policy == "level" else None,
                    "images": args.count,
                    "repeats": args.repeats,
                    "rows": rows,
                },
                f,
                indent=1,
            )
        print(f"wrote {args.json}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from . import ops

    try:
        from ._build_info import BUILT
    except ImportError:
        BUILT = "unknown (not installed with setup.py)"
    print(f"iared-edge {__version__}; torch {torch.__version__}; built: {BUILT}")
    print(
        f"ops backend: cpu -> {ops.backend('cpu')}, cuda -> {ops.backend('cuda')} "
        f"(CUDA device {'present' if torch.cuda.is_available() else 'absent'})"
    )
    from .devices import cpu_has_bf16, cpu_int8_dot

    try:
        import onnxruntime

        ort = f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    except ImportError:
        ort = "onnxruntime not installed (backend onnxruntime, int8)"
    bf16 = cpu_has_bf16()
    print(
        f"CPU: bf16 instructions {'yes' if bf16 else 'no'} (precision auto -> {'bf16' if bf16 else 'fp32'}); "
        f"int8 dot product: {cpu_int8_dot() or 'none reported'}; {ort}"
    )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="iared-edge", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"iared-edge {__version__}",
        help="print the version and exit (`iared-edge info`: also the build and backend)",
    )
    from .runtime.config import RuntimeConfig

    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify images, print top-5, write heatmap PNGs")
    p.add_argument("images", nargs="*", help="image files or folders of them (default: a bundled photo)")
    p.add_argument("--model", default="deit_small_patch16_224", help=MODEL_HELP)
    p.add_argument("--checkpoint", help="timm/DeiT weights for a timm name (.pth or .safetensors)")
    p.add_argument("--policy", default="threshold", choices=["all", "threshold", "level"])
    p.add_argument("--level", type=float, default=0.7, help="keep level for --policy level")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="weights to run (auto: bf16 on a CPU with bf16 instructions, else fp32); default: as loaded",
    )
    p.add_argument(
        "--out",
        default=None,
        help="the heatmap PNG (default heatmap.png); for several images "
        "a folder, one PNG per image (default heatmaps/)",
    )
    p.add_argument("--batch", type=int, default=8, help="images per forward")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when no checkpoint")
    p.set_defaults(func=cmd_predict)
    c = sub.add_parser("calibrate", help="set per-stage thresholds so that a target share of tokens is kept")
    c.add_argument("--model", required=True, help=MODEL_HELP)
    c.add_argument("--checkpoint", help="timm/DeiT weights for a timm name")
    c.add_argument("--images", required=True, help="a folder of unlabelled images (searched recursively)")
    c.add_argument("--keep", type=float, default=0.6, help="target mean fraction of patch tokens kept")
    c.add_argument(
        "--shape",
        choices=["geometric", "learned"],
        default="geometric",
        help="how the keep is spread over the stages: geometric (untrained interpreters) or "
        "learned (the model's own per-stage keeps scaled to the target: trained interpreters)",
    )
    c.add_argument("--limit", type=int, default=500, help="at most this many images")
    c.add_argument("--batch", type=int, default=16)
    c.add_argument("--out", help="where to save (default: the model file itself, or calibrated.safetensors)")
    c.set_defaults(func=cmd_calibrate)
    t = sub.add_parser(
        "train",
        help="train the interpreters with REINFORCE on ImageFolder data (backbone frozen), "
        "optionally fine-tune the backbone after; multi-GPU: torchrun --nproc_per_node N -m iared_edge.cli train ...",
    )
    t.add_argument("--model", required=True, help=MODEL_HELP)
    t.add_argument("--checkpoint", help="timm/DeiT weights for a timm name")
    t.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    t.add_argument("--out-dir", default="runs/interpreters", help="checkpoints, history.json, model.safetensors")
    t.add_argument("--steps", type=int, default=500, help="steps per stage of the curriculum")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--penalty", type=float, default=1.0, help="reward of a wrong prediction is -penalty")
    t.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="then fine-tune the backbone this many steps under the learned policy, distilling the full model",
    )
    t.add_argument("--finetune-lr", type=float, default=1e-5)
    t.add_argument("--alpha", type=float, default=0.5, help="fine-tuning: weight of distillation vs the labels")
    t.add_argument("--val-every", type=int, default=200)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--device", default="auto")
    t.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="none",
        help="autocast dtype; auto: bf16 on a GPU or a CPU with bf16 instructions, else none",
    )
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser(
        "export",
        help="export ONNX graphs: policy level (one file per keep level, or one with the counts "
        "as input) or policy threshold (one image per run)",
    )
    e.add_argument("--model", required=True, help=MODEL_HELP)
    e.add_argument("--checkpoint", help="timm/DeiT weights for a timm name")
    e.add_argument(
        "--format",
        choices=["onnx", "triton"],
        default="onnx",
        help="onnx: the graphs; triton: a Triton model repository (one model per keep level, config.pbtxt)",
    )
    e.add_argument("--max-batch", type=int, default=8, help="--format triton: the models' max_batch_size")
    e.add_argument(
        "--policy",
        choices=["level", "threshold"],
        default="level",
        help="level: graphs of fixed keep levels (dynamic batch); threshold: one graph in which each "
        "image keeps its own tokens (the model's thresholds; one image per run)",
    )
    e.add_argument("--keep-levels", default="1.0,0.8,0.6,0.4", help="comma-separated keep levels (policy level)")
    e.add_argument("--out-dir", default="export")
    e.add_argument(
        "--keep-counts-input",
        action="store_true",
        help="one graph whose per-stage keep counts are an input (TensorRT >= 10), instead of one file per level",
    )
    e.add_argument("--opset", type=int, default=17)
    e.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="int8: the blocks' and head's weights in int8 (ONNX Runtime's dynamic quantization), "
        "for CPUs; the interpreters stay float32",
    )
    e.set_defaults(func=cmd_export)
    d = sub.add_parser("make-digits", help="write the digits-in-clutter demo dataset (ImageFolder + boxes.json)")
    d.add_argument("--out", default="data/digits")
    d.add_argument("--train", type=int, default=5000)
    d.add_argument("--val", type=int, default=500)
    d.add_argument("--test", type=int, default=1000)
    d.add_argument("--clutter", type=float, default=1.0, help="photo strength, 0 (black) to 1 (the real task)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_make_digits)
    v = sub.add_parser(
        "eval", help="accuracy, keep and heatmap quality (pointing game, energy, deletion/insertion) on data with boxes"
    )
    v.add_argument("--model", default="demo", help=MODEL_HELP)
    v.add_argument("--checkpoint", help="timm/DeiT weights for a timm name")
    v.add_argument("--data", required=True, help="a dataset written by make-digits")
    v.add_argument("--split", default="test")
    v.add_argument("--limit", type=int, default=None, help="at most this many images")
    v.add_argument("--methods", default="interpreter,attention,rollout,gradcam")
    v.add_argument(
        "--curve-images",
        type=int,
        default=100,
        help="images used for deletion/insertion curves (each costs 30 forwards per heatmap "
        "method: about 1 s per image and method for the demo model on 2 CPU cores; 0 skips the curves)",
    )
    v.add_argument("--out", help="write OUT.json, OUT.md and OUT.png")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=cmd_eval)
    b = sub.add_parser(
        "bench",
        help="time the plain backbone and IA-RED² side by side on this device: speed-up against the FLOPs bound",
    )
    b.add_argument("--model", default="demo", help=MODEL_HELP)
    b.add_argument("--checkpoint", help="timm/DeiT weights for a timm name")
    b.add_argument(
        "--images",
        help="a folder of images to time on (default: the demo task's test images for "
        "the demo model, else a bundled photo); what the interpreters keep depends on them",
    )
    b.add_argument("--count", type=int, default=32, help="images per pass (cycled if the folder has fewer)")
    b.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    b.add_argument("--policy", default="threshold", choices=["threshold", "level"])
    b.add_argument("--level", type=float, default=0.7, help="keep level for --policy level")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    b.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch, or onnxruntime: both sides as ONNX Runtime graphs on the CPU (the plain backbone's "
        "graph against the thresholds' graph, one image per run, or the --policy level graph)",
    )
    b.add_argument(
        "--precision",
        choices=RUNTIME_PRECISIONS,
        default=None,
        help="weights to run (auto: fp16 on a GPU, bf16 on a CPU with bf16 instructions, else fp32); "
        "int8 with --backend onnxruntime; default: as loaded (onnxruntime: fp32)",
    )
    b.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    b.add_argument("--repeats", type=int, default=11, help="passes over the images")
    b.add_argument("--json", help="also write the results here")
    b.add_argument("--seed", type=int, default=0, help="seed of the random weights when no checkpoint")
    b.set_defaults(func=cmd_bench)
    s = sub.add_parser(
        "serve",
        help="serve the model through Triton Inference Server (gRPC, HTTP, Prometheus metrics) for many cameras",
    )
    s.add_argument("--model", default="demo", help=MODEL_HELP + " (default: demo)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--address", default="0.0.0.0", help="the address the three ports listen on")
    s.add_argument("--max-batch", type=int, default=8, help="frames per forward at most (Triton's dynamic batcher)")
    s.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="how long Triton may hold a frame to fill a batch"
    )
    s.add_argument("--thresholds", default=None, help="policy threshold: one value or one per stage, comma-separated")
    RuntimeConfig.add_arguments(s)
    s.set_defaults(func=cmd_serve)
    i = sub.add_parser("info", help="version, build and active ops backend")
    i.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"iared-edge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
