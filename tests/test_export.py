"""ONNX export of policy "level", checked by onnx's checker and run by onnxruntime against PyTorch."""

import json
import math
import os

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from iared_edge import IARedViT  # noqa: E402  (after the importorskips)
from iared_edge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return IARedViT.from_timm("deit_tiny_patch16_224").eval()


@pytest.mark.parametrize("level", [1.0, 0.6, (0.9, 0.5, 0.4)])
def test_onnxruntime_matches_pytorch(model, tmp_path, level):
    from iared_edge.export import export_onnx

    path = str(tmp_path / "m.onnx")
    names = export_onnx(model, path, level)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert "TopK" in ops and "Einsum" not in ops
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        outs = dict(zip(names, sess.run(None, {"images": x.numpy()})))
        with torch.no_grad():
            ref = model(x, policy="level", level=level)  # the packed execution, compiled ops
        assert np.abs(outs["logits"] - ref.logits.numpy()).max() <= 1e-4
        assert np.abs(outs["heatmap"] - ref.heatmap.numpy()).max() <= 1e-5
        for s in range(3):
            kept = np.zeros((batch, model.num_patches), bool)
            np.put_along_axis(kept, outs[f"kept_stage{s + 1}"], True, 1)
            assert (kept == ref.keep_masks[:, s].numpy()).all()


def test_export_cli_one_file_per_level(tmp_path, capsys):
    assert (
        main(["export", "--model", "deit_tiny_patch16_224", "--keep-levels", "1.0,0.5", "--out-dir", str(tmp_path)])
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep0.50.onnx", "keep1.00.onnx"]
    g = onnx.load(str(tmp_path / "keep0.50.onnx"))
    assert [o.name for o in g.graph.output][1:4] == ["kept_stage1", "kept_stage2", "kept_stage3"]
    sess = ort.InferenceSession(str(tmp_path / "keep0.50.onnx"), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"images": np.zeros((1, 3, 224, 224), np.float32)})
    assert [o.shape for o in outs] == [(1, 1000), (1, 98), (1, 49), (1, 25), (1, 14, 14)]


def test_export_rejects_bad_levels(model, tmp_path):
    from iared_edge.export import export_onnx

    with pytest.raises(ValueError, match="level"):
        export_onnx(model, str(tmp_path / "x.onnx"), 0.0)
    with pytest.raises(ValueError, match="opset must be >= 14"):
        export_onnx(model, str(tmp_path / "x.onnx"), 0.5, opset=13)
    assert (
        main(["export", "--model", "deit_tiny_patch16_224", "--keep-levels", "1.0,half", "--out-dir", str(tmp_path)])
        == 2
    )
    assert not list(tmp_path.glob("*.onnx"))  # nothing written before the bad level was found


@pytest.mark.parametrize("profile", [None, [0.5, 0.5, 0.1]])
def test_runtime_onnxruntime_backend_gives_the_same_result(model, tmp_path, profile):
    """Same Result from both backends; with a keep profile both follow it (the level maps to the
    same per-stage levels), in a cache directory another model's graphs were left in."""
    import cv2
    from test_runtime import CLIP

    from iared_edge import Runtime

    frame = cv2.VideoCapture(CLIP).read()[1]
    torch.manual_seed(5)
    other = IARedViT.from_timm("deit_tiny_patch16_224").eval()
    Runtime(other, policy="level", level=0.6, backend="onnxruntime", onnx_cache=str(tmp_path)).close()
    model.keep_profile = profile
    try:
        levels = model.stage_levels(0.6)
        with (
            Runtime(model, policy="level", level=0.6, topk=3) as rt_torch,
            Runtime(
                model, policy="level", level=0.6, topk=3, backend="onnxruntime", onnx_cache=str(tmp_path)
            ) as rt_ort,
        ):
            a, b = rt_torch(frame), rt_ort(frame)
            # a batch runs through the same graph (dynamic batch axis)
            pair = [frame, np.ascontiguousarray(frame[::-1])]
            for x, y in zip(rt_torch.batch(pair), rt_ort.batch(pair)):
                assert x.indices == y.indices and np.array_equal(x.stage_masks, y.stage_masks)
    finally:
        model.keep_profile = None
    assert a.indices == b.indices and np.allclose(a.probs, b.probs, atol=1e-5)
    assert np.array_equal(a.stage_masks, b.stage_masks) and np.allclose(a.heatmap, b.heatmap, atol=1e-5)
    assert a.stage_keep == pytest.approx(b.stage_keep)
    assert (levels[1] == pytest.approx(1.0)) == (profile is not None)  # the profile's stage 2 keeps all
    n, expect = model.num_patches, []
    for level in levels:  # policy "level"'s rule: ceil(level * alive)
        n = min(n, math.ceil(level * n - 1e-6))
        expect.append(n / model.num_patches)
    assert a.stage_keep == pytest.approx(expect)
    with pytest.raises(ValueError, match="policy"):
        Runtime(model, policy="all", backend="onnxruntime")


@pytest.mark.parametrize(
    "form, files",
    [
        (None, ["keep_counts.onnx"]),  # ONNX Runtime's default: one graph
        ("levels", ["keep0.5000.onnx", "keep1.0000.onnx"]),
    ],
)
def test_runtime_onnxruntime_backend_under_a_budget(model, tmp_path, form, files):
    import warnings

    from test_runtime import CLIP

    from iared_edge import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(
            model,
            budget_ms=1000.0,
            backend="onnxruntime",
            levels=(1.0, 0.5),
            onnx_cache=str(tmp_path),
            calibrate_runs=1,
            onnx_form=form,
        )
    results = [r for _, r in rt.stream(CLIP)]
    assert len(results) == 30 and all(r.keep_level == 1.0 for r in results[5:])
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_keep_counts_input_graph_matches_pytorch_at_every_level(model, tmp_path, capsys):
    from iared_edge.export import keep_counts_for

    assert (
        main(
            [
                "export",
                "--model",
                "deit_tiny_patch16_224",
                "--keep-levels",
                "1.0,0.7,0.4",
                "--keep-counts-input",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    path = str(tmp_path / "keep_counts.onnx")
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["images", "keep_counts"]
    import json

    table = json.loads((tmp_path / "keep_levels.json").read_text())
    assert table["0.70"] == keep_counts_for(model, 0.7)
    # the CLI exported a fresh random-weight model: export ours to compare against it
    from iared_edge.export import export_onnx_counts

    export_onnx_counts(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    for level in (1.0, 0.7, (0.9, 0.5, 0.4)):
        counts = np.asarray(keep_counts_for(model, level), np.int64)
        outs = sess.run(None, {"images": x.numpy(), "keep_counts": counts})
        with torch.no_grad():
            ref = model(x, policy="level", level=level)
        assert np.abs(outs[0] - ref.logits.numpy()).max() <= 1e-4
        assert [o.shape[1] for o in outs[1:4]] == list(counts)


def test_runtime_onnxruntime_counts_form_equals_levels_form(model, tmp_path):
    import cv2
    from test_runtime import CLIP

    from iared_edge import Runtime

    frame = cv2.VideoCapture(CLIP).read()[1]
    with (
        Runtime(
            model, policy="level", level=0.6, backend="onnxruntime", onnx_cache=str(tmp_path / "a"), onnx_form="levels"
        ) as a,
        Runtime(
            model, policy="level", level=0.6, backend="onnxruntime", onnx_cache=str(tmp_path / "b"), onnx_form="counts"
        ) as b,
    ):
        ra, rb = a(frame), b(frame)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["keep0.6000.onnx"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["keep_counts.onnx"]
    assert ra.indices == rb.indices and np.allclose(ra.probs, rb.probs, atol=1e-6)
    assert np.array_equal(ra.stage_masks, rb.stage_masks)
    with pytest.raises(ValueError, match="form"):
        Runtime(model, policy="level", level=0.6, backend="onnxruntime", onnx_form="dynamic")


def test_tensorrt_engine_cache_key_separates_what_makes_engines_incompatible():
    from iared_edge.export.tensorrt_backend import engine_key

    base = engine_key(b"graph", "Orin", (8, 7), "10.3.0", True, 8)
    assert base == engine_key(b"graph", "Orin", (8, 7), "10.3.0", True, 8)
    others = [
        engine_key(b"graph2", "Orin", (8, 7), "10.3.0", True, 8),
        engine_key(b"graph", "Xavier", (7, 2), "10.3.0", True, 8),
        engine_key(b"graph", "Orin", (8, 7), "10.4.0", True, 8),
        engine_key(b"graph", "Orin", (8, 7), "10.3.0", False, 8),
        engine_key(b"graph", "Orin", (8, 7), "10.3.0", True, 4),
    ]
    assert len({base, *others}) == 6


def test_runtime_tensorrt_needs_a_cuda_device(model):
    from iared_edge import Runtime

    with pytest.raises(ValueError, match="CUDA"):
        Runtime(model, device="cpu", policy="level", level=0.5, backend="tensorrt")


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["levels", "counts"])
def test_tensorrt_backend_matches_pytorch(model, tmp_path, form):
    pytest.importorskip("tensorrt")
    from iared_edge.export.tensorrt_backend import TensorRTBackend

    m = model.cuda()
    trt_backend = TensorRTBackend(m, [1.0, 0.5], str(tmp_path), fp16=False, form=form)
    x = torch.randn(2, 3, 224, 224, device="cuda")
    for level in (1.0, 0.5):
        out = trt_backend(x, level)
        with torch.no_grad():
            ref = m(x, policy="level", level=level)
        assert (out.logits - ref.logits).abs().max().item() <= 1e-3
        assert torch.equal(out.keep_masks, ref.keep_masks)
    # the second construction loads the cached engines instead of building
    engines = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".engine")
    TensorRTBackend(m, [1.0, 0.5], str(tmp_path), fp16=False, form=form)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".engine") == engines
    model.cpu()


def _matmuls(graph):
    """(float MatMul names, MatMulInteger names) of an ONNX graph."""
    nodes = graph.graph.node
    return [n.name for n in nodes if n.op_type == "MatMul"], [n.name for n in nodes if n.op_type == "MatMulInteger"]


def test_int8_graph_quantizes_the_blocks_and_head_not_the_interpreters(model, tmp_path, capsys):
    """`export --precision int8`: every block's qkv, projection and MLP and the head read int8
    weights; the interpreters and attention's activation products stay float32, so stage 1 keeps
    exactly the tokens the float32 model keeps; logits and later stages stay close to PyTorch's."""
    assert (
        main(
            [
                "export",
                "--model",
                "deit_tiny_patch16_224",
                "--keep-levels",
                "0.6",
                "--precision",
                "int8",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "int8 weights" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep0.60.int8.onnx"]  # no float32 file left behind
    # the CLI exported a fresh random-weight model: export ours to compare against PyTorch
    from iared_edge.export import export_onnx

    path = str(tmp_path / "ours.onnx")
    names = export_onnx(model, path, 0.6, int8=True)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    floats, ints = _matmuls(graph)
    assert len(ints) == 4 * len(model.vit.blocks) + 1  # qkv, proj, fc1, fc2 per block; the head
    assert not [n for n in ints if n.startswith("/interpreters.")]
    assert len([n for n in floats if n.startswith("/interpreters.")]) == 2 * model.num_stages
    assert len([n for n in floats if "/attn/" in n]) == 2 * len(model.vit.blocks)  # q @ k^T, attn @ v
    export_onnx(model, str(tmp_path / "f.onnx"), 0.6)
    assert os.path.getsize(path) < 0.4 * os.path.getsize(tmp_path / "f.onnx")  # int8 weights: a quarter of the bytes
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    outs = dict(zip(names, sess.run(None, {"images": x.numpy()})))
    with torch.no_grad():
        ref = model(x, policy="level", level=0.6)
    kept = np.zeros((4, 3, model.num_patches), bool)
    for s in range(3):
        np.put_along_axis(kept[:, s], outs[f"kept_stage{s + 1}"], True, 1)
    assert (kept[:, 0] == ref.keep_masks[:, 0].numpy()).all()  # stage 1 scores the float32 patch embedding
    overlap = (kept[:, 1:] & ref.keep_masks[:, 1:].numpy()).sum() / ref.keep_masks[:, 1:].sum().item()
    assert overlap >= 0.9, overlap
    a, b = outs["logits"], ref.logits.numpy()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.98, cos
    assert not np.allclose(a, b, atol=1e-4)  # it really runs int8 arithmetic


def test_plain_backbone_graph_is_timms_forward_in_float32_and_int8(model, tmp_path):
    """The bench's baseline: timm's forward of `model.vit`, every MatMul weight int8 in its int8 form."""
    from iared_edge.export import export_onnx_plain

    export_onnx_plain(model, str(tmp_path / "p.onnx"))
    export_onnx_plain(model, str(tmp_path / "p8.onnx"), int8=True)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model.vit(x).numpy()
    run = lambda f: ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()}
    )[0]
    assert np.abs(run("p.onnx") - ref).max() <= 1e-4
    floats, ints = _matmuls(onnx.load(str(tmp_path / "p8.onnx")))
    assert len(ints) == 4 * len(model.vit.blocks) + 1 and len(floats) == 2 * len(model.vit.blocks)
    a = run("p8.onnx")
    assert ((a * ref).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(ref, axis=1)).min() >= 0.98


def test_int8_needs_an_exported_graph_and_the_onnxruntime_backend(model, tmp_path):
    from iared_edge import Runtime
    from iared_edge.export import quantize_int8

    with pytest.raises(FileNotFoundError, match="no ONNX graph"):
        quantize_int8(str(tmp_path / "missing.onnx"), str(tmp_path / "out.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="junk.onnx is not a readable ONNX graph"):
        quantize_int8(str(tmp_path / "junk.onnx"), str(tmp_path / "out.onnx"))
    with pytest.raises(ValueError, match='backend="onnxruntime"'):
        Runtime(model, policy="level", level=0.6, precision="int8")
    with pytest.raises(ValueError, match="int8"):
        Runtime(model, policy="level", level=0.6, precision="bf16", backend="onnxruntime")
    with pytest.raises(ValueError, match="precision must be one of"):
        Runtime(model, policy="level", level=0.6, precision="int4", backend="onnxruntime")


@pytest.fixture(scope="module")
def demo_frames():
    """The bundled model and 12 held-out demo-task images (RGB uint8): trained interpreters, so each
    image keeps its own number of tokens."""
    from iared_edge import load_model
    from iared_edge.demo import DigitsInClutter

    imgs, _, _ = DigitsInClutter("test", seed=0).batch(range(12))
    return load_model("demo").float().eval(), list(imgs)


def test_threshold_graph_keeps_each_images_own_tokens_as_pytorch_does(demo_frames, tmp_path, capsys):
    """`export --policy threshold`: one image per run, and per image exactly the tokens the packed
    PyTorch forward keeps at every stage (variable counts), the same logits and heatmap; its int8
    form keeps stage 1's tokens exactly and reads the same digits."""
    from iared_edge.export import export_onnx_threshold
    from iared_edge.preprocess import model_input

    model, imgs = demo_frames
    path = str(tmp_path / "t.onnx")
    names = export_onnx_threshold(model, path)
    export_onnx_threshold(model, str(tmp_path / "t8.onnx"), int8=True)
    onnx.checker.check_model(onnx.load(path))
    assert "NonZero" in {n.op_type for n in onnx.load(path).graph.node}
    sess, sess8 = (
        ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]) for f in ("t.onnx", "t8.onnx")
    )
    x = torch.cat([model_input(model, im) for im in imgs])
    with torch.no_grad():
        ref = model(x, policy="threshold")  # the packed execution: a batch of variable-length sequences
    counts, agree8 = set(), 0
    for i in range(len(imgs)):
        outs = dict(zip(names, sess.run(None, {"images": x[i : i + 1].numpy()})))
        assert np.abs(outs["logits"] - ref.logits[i : i + 1].numpy()).max() <= 1e-4
        assert np.abs(outs["heatmap"] - ref.heatmap[i : i + 1].numpy()).max() <= 1e-5
        for s in range(3):
            kept = np.zeros(model.num_patches, bool)
            kept[outs[f"kept_stage{s + 1}"][0]] = True
            assert (kept == ref.keep_masks[i, s].numpy()).all()
        counts.add(tuple(ref.kept_counts[i].tolist()))
        outs8 = dict(zip(names, sess8.run(None, {"images": x[i : i + 1].numpy()})))
        assert sorted(outs8["kept_stage1"][0]) == sorted(outs["kept_stage1"][0])
        agree8 += outs8["logits"].argmax() == outs["logits"].argmax()
    assert len(counts) > 3  # the images really keep different numbers of tokens
    assert agree8 >= len(imgs) - 1
    # a stage that keeps no patch token: the class token goes on alone, as in the packed forward
    export_onnx_threshold(model, str(tmp_path / "none.onnx"), thresholds=(0.5, 1.0, 0.5))
    outs = ort.InferenceSession(str(tmp_path / "none.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x[:1].numpy()}
    )
    with torch.no_grad():
        ref = model(x[:1], policy="threshold", thresholds=(0.5, 1.0, 0.5))
    assert [o.shape[1] for o in outs[2:4]] == [0, 0] and ref.kept_counts[0, 1:].tolist() == [0, 0]
    assert np.abs(outs[0] - ref.logits.numpy()).max() <= 1e-4
    with pytest.raises(ValueError, match="thresholds"):
        export_onnx_threshold(model, str(tmp_path / "x.onnx"), thresholds=(0.5, 0.5))
    with pytest.raises(Exception):  # noqa: B017  (one image per run: ONNX Runtime's own error for a batch of 2)
        sess.run(None, {"images": x[:2].numpy()})
    assert main(["export", "--model", "demo", "--policy", "threshold", "--out-dir", str(tmp_path / "cli")]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["threshold.onnx"]
    assert (
        main(
            [
                "export",
                "--model",
                "demo",
                "--policy",
                "threshold",
                "--keep-counts-input",
                "--out-dir",
                str(tmp_path / "cli"),
            ]
        )
        == 2
    )
    assert "not of --policy threshold" in capsys.readouterr().err


def test_runtime_onnxruntime_backend_runs_the_thresholds(demo_frames, tmp_path):
    """`Runtime(backend="onnxruntime")` with policy "threshold": the same Results as the torch
    backend, one frame or a batch (run image by image), in float32; int8 reads the same digits."""
    from iared_edge import Runtime

    model, imgs = demo_frames
    with (
        Runtime(model, color="rgb") as rt_torch,
        Runtime(model, color="rgb", backend="onnxruntime", onnx_cache=str(tmp_path / "a")) as rt_ort,
        Runtime(model, color="rgb", backend="onnxruntime", precision="int8", onnx_cache=str(tmp_path / "b")) as rt8,
    ):
        a, b = rt_torch.batch(imgs), rt_ort.batch(imgs)
        one = rt_ort(imgs[3])
        c = rt8.batch(imgs)
    for x, y in zip(a, b):
        assert x.indices == y.indices and np.allclose(x.probs, y.probs, atol=1e-5)
        assert np.array_equal(x.stage_masks, y.stage_masks) and np.allclose(x.heatmap, y.heatmap, atol=1e-5)
        assert x.stage_keep == pytest.approx(y.stage_keep)
    assert len({tuple(r.stage_keep) for r in b}) > 3
    assert one.indices == b[3].indices and np.array_equal(one.stage_masks, b[3].stage_masks)
    assert sum(x.indices[0] == z.indices[0] for x, z in zip(a, c)) >= len(imgs) - 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["threshold.onnx"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["threshold.int8.onnx"]
    with pytest.raises(ValueError, match='policy "threshold" or "level"'):
        Runtime(model, policy="all", backend="onnxruntime")


def test_int8_graphs_run_on_the_cpu_provider_even_where_a_gpu_provider_is(model, tmp_path, monkeypatch):
    from iared_edge.export.onnxruntime_backend import OnnxRuntimeBackend

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend = OnnxRuntimeBackend(model, [], str(tmp_path), form="threshold", int8=True)
    assert backend.providers == ["CPUExecutionProvider"]
    assert backend.session.get_providers() == ["CPUExecutionProvider"]


def test_graphs_carry_what_an_app_needs_without_python(model, tmp_path):
    """Input size, normalisation, labels, grid and the policy's constants in every graph's metadata
    (JSON values), int8 included, read back through ONNX Runtime."""
    import json

    from iared_edge.export import (
        export_onnx,
        export_onnx_counts,
        export_onnx_plain,
        export_onnx_threshold,
        keep_counts_for,
    )
    from iared_edge.preprocess import model_normalization

    paths = {
        "level": tmp_path / "r.onnx",
        "counts": tmp_path / "c.onnx",
        "threshold": tmp_path / "t.onnx",
        "plain": tmp_path / "p.onnx",
    }
    export_onnx(model, str(paths["level"]), 0.6, int8=True)
    export_onnx_counts(model, str(paths["counts"]))
    export_onnx_threshold(model, str(paths["threshold"]), thresholds=(0.4, 0.5, 0.6))
    export_onnx_plain(model, str(paths["plain"]))
    mean, std, crop = model_normalization(model)
    meta = {}
    for k, p in paths.items():
        raw = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        meta[k] = {key: json.loads(raw[key]) for key in raw if key != "onnx.infer"}  # that one is the quantizer's
        m = meta[k]
        assert m["input_size"] == [3, 224, 224] and m["color"] == "RGB" and m["crop_pct"] == crop
        assert m["mean"] == pytest.approx(list(mean)) and m["std"] == pytest.approx(list(std))
        assert m["labels"] == model.class_names() and len(m["labels"]) == 1000
        assert m["grid"] == [14, 14] and m["num_stages"] == 3 and m["producer"].startswith("iared-edge ")
    assert meta["level"]["policy"] == "level" and meta["level"]["keep_counts"] == keep_counts_for(model, 0.6)
    assert meta["counts"]["keep_counts_input"] is True
    assert meta["threshold"]["policy"] == "threshold" and meta["threshold"]["thresholds"] == [0.4, 0.5, 0.6]
    assert meta["plain"]["policy"] == "all"


def test_onnx_camera_sample_needs_no_pytorch_and_answers_as_the_runtime(tmp_path, capsys):
    """samples/onnx_camera.py: ONNX Runtime and OpenCV only (PyTorch is never imported), everything
    read from the graph's metadata, and per frame the label and confidence the Runtime gives with
    the same graph."""
    import subprocess
    import sys

    import cv2

    from iared_edge import Runtime
    from iared_edge.demo.clip import DEMO_CLIP

    sample = os.path.join(os.path.dirname(__file__), "..", "samples", "onnx_camera.py")
    assert (
        main(["export", "--model", "demo", "--policy", "threshold", "--precision", "int8", "--out-dir", str(tmp_path)])
        == 0
    )
    graph, out = str(tmp_path / "threshold.int8.onnx"), str(tmp_path / "frames.json")
    code = (
        "import runpy, sys; sys.argv = sys.argv[1:]; "
        "exit_code = runpy.run_path(sys.argv[0], run_name='not_main')['main'](sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'the sample imported torch'; sys.exit(exit_code)"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            sample,
            graph,
            "--source",
            DEMO_CLIP,
            "--headless",
            "--max-frames",
            "4",
            "--json",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    frames = json.loads(open(out).read())["frames"]
    assert len(frames) == 4 and len(run.stdout.splitlines()) == 4
    cap = cv2.VideoCapture(DEMO_CLIP)
    with Runtime("demo", backend="onnxruntime", precision="int8", onnx_cache=str(tmp_path / "rt")) as rt:
        for rec in frames:
            res = rt(cap.read()[1])
            assert rec["label"] == res.label and rec["confidence"] == pytest.approx(res.score, abs=1e-5)
            assert rec["keep_per_stage"] == pytest.approx(res.stage_keep)
    bad = subprocess.run(
        [sys.executable, sample, str(tmp_path / "missing.onnx"), "--headless"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no ONNX graph at" in bad.stderr
    from iared_edge import load_model
    from iared_edge.export import export_onnx_counts

    export_onnx_counts(load_model("demo"), str(tmp_path / "c.onnx"))
    bad = subprocess.run(
        [sys.executable, sample, str(tmp_path / "c.onnx"), "--headless"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "keep counts as an input" in bad.stderr
    bad = subprocess.run(
        [sys.executable, sample, graph, "--headless", "--providers", "NoSuchExecutionProvider"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not in this onnxruntime build" in bad.stderr


def test_threshold_graph_of_a_distilled_deit_never_drops_its_two_prefix_tokens(tmp_path):
    """Class and distillation tokens stay; the patch tokens kept are PyTorch's, stage by stage."""
    from iared_edge.export import export_onnx_threshold

    torch.manual_seed(0)
    dist = IARedViT.from_timm("deit_tiny_distilled_patch16_224").eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = float(dist.interpreters[0](dist._embed(x))[:, 2:].median())  # about half the patches go at stage 1
    names = export_onnx_threshold(dist, str(tmp_path / "d.onnx"), thresholds=t)
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    for i in range(2):
        outs = dict(zip(names, sess.run(None, {"images": x[i : i + 1].numpy()})))
        with torch.no_grad():
            ref = dist(x[i : i + 1], thresholds=t)
        assert np.abs(outs["logits"] - ref.logits.numpy()).max() <= 1e-4
        for s in range(3):
            assert np.array_equal(np.sort(outs[f"kept_stage{s + 1}"][0]), np.flatnonzero(ref.keep_masks[0, s].numpy()))
        assert 0 < ref.kept_counts[0, 0] < dist.num_patches
