"""RuntimeConfig, the backend interface, the keep level's one name, the core's imports, the overlay."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch

from iared_edge import Runtime, RuntimeConfig
from iared_edge.preprocess import overlay
from iared_edge.runtime import BackendOutput, TorchBackend, make_backend


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(policy="ratio"), 'policy "ratio" is now called "level"'),
        (dict(policy="level"), 'policy "level" needs level='),
        (dict(level=0.5), "with policy 'threshold' it would be ignored"),
        (dict(policy="level", level=1.5), r"keep level in \(0, 1\], got 1.5"),
        (dict(budget_ms=0), "budget_ms must be a positive number"),
        (dict(budget_ms=30, levels=[1.0, 1.2]), r"levels are keep levels in \[0, 1\]"),
        (dict(color="hsv"), "color must be"),
        (dict(fit="stretch"), "fit must be one of"),
        (dict(topk=0), "topk must be at least 1"),
        (dict(backend="tvm"), "backend must be one of"),
        (dict(backend="tensorrt"), 'backend "tensorrt" runs policy "level" graphs'),
        (dict(precision="int8"), 'precision "int8" runs int8 ONNX Runtime graphs'),
        (
            dict(backend="onnxruntime", policy="level", level=0.5, precision="fp16"),
            'backend "onnxruntime" runs float32',
        ),
        (dict(threads=0), "threads must be 'auto', a positive int"),
        (dict(onnx_form="dense"), "onnx_form must be one of"),
    ],
)
def test_config_refuses_bad_settings_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RuntimeConfig(**kwargs)


def test_config_round_trips_through_the_command_line():
    ap = argparse.ArgumentParser()
    RuntimeConfig.add_arguments(ap)
    ap.add_argument("--source")  # an option of the app's own stays out of the config
    args = ap.parse_args(
        [
            "--budget-ms",
            "30",
            "--precision",
            "fp32",
            "--fit",
            "crop",
            "--topk",
            "3",
            "--device",
            "cpu",
            "--no-cuda-graphs",
            "--source",
            "0",
        ]
    )
    cfg = RuntimeConfig.from_args(args)
    assert cfg == RuntimeConfig(device="cpu", budget_ms=30.0, precision="fp32", fit="crop", topk=3, cuda_graphs=False)
    level = RuntimeConfig.from_args(ap.parse_args(["--policy", "level", "--level", "0.4"]))
    assert (level.policy, level.level, level.graph_levels) == ("level", 0.4, [0.4])
    with pytest.raises(ValueError, match="needs level="):
        RuntimeConfig.from_args(ap.parse_args(["--policy", "level"]))


def test_runtime_takes_a_config_or_keywords_alike(tiny):
    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    with (
        Runtime(tiny, RuntimeConfig(device="cpu", policy="level", level=0.5, topk=3)) as a,
        Runtime(tiny, device="cpu", policy="level", level=0.5, topk=3) as b,
    ):
        ra, rb = a(frame), b(frame)
    assert ra.labels == rb.labels and ra.probs == pytest.approx(rb.probs)
    assert np.array_equal(ra.stage_masks, rb.stage_masks)
    with pytest.raises(ValueError, match="not both"):
        Runtime(tiny, RuntimeConfig(device="cpu"), topk=3)
    with pytest.raises(TypeError, match="options are: device, budget_ms"):
        Runtime(tiny, device="cpu", ratio=0.5)


def test_torch_backend_answers_with_named_fields_as_the_model(tiny, images):
    cfg = RuntimeConfig(device="cpu", policy="level", level=0.6)
    backend = make_backend(tiny, cfg, torch.device("cpu"))
    assert isinstance(backend, TorchBackend) and backend.fixed_batch is None
    out = backend(images, None)  # None: the config's own policy and level
    assert isinstance(out, BackendOutput)
    with torch.no_grad():
        ref = tiny(images, policy="level", level=tiny.stage_levels(0.6))
    # on a CPU the backend's linears run on prepacked weights: the same sums, rounded differently
    assert torch.allclose(out.logits, ref.logits, atol=1e-5) and torch.equal(out.keep_masks, ref.keep_masks)
    assert torch.allclose(out.keep_ratio, ref.keep_ratio) and torch.allclose(out.heatmap, ref.heatmap, atol=1e-5)
    at_03 = backend(images, 0.3)  # a level given per call wins
    assert at_03.keep_masks[:, 0].sum() < out.keep_masks[:, 0].sum()


def test_onnxruntime_backend_answers_as_the_torch_backend(tiny, images, tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = RuntimeConfig(device="cpu", backend="onnxruntime", policy="level", level=0.5, onnx_cache=str(tmp_path))
    graph = make_backend(tiny, cfg, torch.device("cpu"))
    eager = make_backend(tiny, RuntimeConfig(device="cpu", policy="level", level=0.5), torch.device("cpu"))
    a, b = graph(images, 0.5), eager(images, 0.5)
    assert graph.name == "onnxruntime" and graph.levels == [0.5]
    assert torch.equal(a.keep_masks, b.keep_masks)
    assert torch.allclose(a.logits, b.logits, atol=1e-4)


def test_the_old_policy_name_is_refused_with_the_new_one(tiny, images):
    with pytest.raises(ValueError, match='now called "level"'):
        tiny(images, policy="ratio", level=0.5)


def test_a_scalar_level_follows_the_keep_profile(tiny, images):
    """One keep level means the same thing to the model, the Runtime and the exported graphs:
    `stage_levels(level)`, which follows the model's keep profile."""
    old = tiny.keep_profile
    try:
        tiny.keep_profile = [0.5, 0.5, 0.3]
        per_stage = tiny.stage_levels(0.6)
        assert len(set(per_stage)) > 1  # the profile shapes it
        with torch.no_grad():
            a = tiny(images, policy="level", level=0.6)
            b = tiny(images, policy="level", level=per_stage)
        assert torch.equal(a.keep_masks, b.keep_masks)
    finally:
        tiny.keep_profile = old


def test_importing_the_package_leaves_the_demo_alone():
    code = (
        "import sys, iared_edge, iared_edge.runtime, iared_edge.export, iared_edge.train, iared_edge.cli; "
        "print('iared_edge.demo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    # asking for a demo model registers its backbone then, and only then
    code = (
        "import sys, timm; from iared_edge import IARedViT, load_model; "
        "assert not timm.is_model('iared_digits_tiny'); m = load_model('demo'); "
        "assert timm.is_model('iared_digits_tiny'); IARedViT.from_timm('iared_digits_tiny'); "
        "print('iared_edge.demo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def _contrast(img, box):
    y0, y1, x0, x1 = box
    g = img[y0:y1, x0:x1].astype(np.float64).mean(-1)
    return g.max() - g.min()


def test_overlay_keeps_what_the_model_reads_legible():
    """Dark ink on a light patch stays legible under the explanation: warm patches keep most of the
    ink's contrast, and dropped patches are greyed, not darkened (the old overlay kept 35%)."""
    rgb = np.full((64, 64, 3), 200, np.uint8)
    rgb[8:24, 12:20] = 20  # a stroke in patch (0, 0), which is hot and kept
    rgb[40:56, 44:52] = (20, 60, 200)  # a coloured stroke in patch (1, 1), which is dropped
    heat = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    kept = np.array([[True, False], [False, False]])
    out = overlay(rgb, heat, kept, alpha=0.45)
    hot, dropped = (0, 32, 0, 32), (32, 64, 32, 64)
    assert _contrast(out, hot) >= 0.5 * _contrast(rgb, hot)
    assert _contrast(out, dropped) >= 0.9 * _contrast(rgb, dropped)
    # greyed: the dropped patch loses colour but keeps its brightness
    spread = lambda img: np.ptp(img[44, 48].astype(int))
    assert spread(out) < spread(rgb)
    assert abs(out[32:, 32:].mean() - rgb[32:, 32:].mean()) < 8
    # a cold kept patch is the image itself
    assert np.array_equal(overlay(rgb, np.zeros((2, 2), np.float32), np.ones((2, 2), bool)), rgb)


def test_tensorrt_on_a_cpu_is_refused_by_the_backend_factory(tiny):
    with pytest.raises(ValueError, match='backend "tensorrt" runs on a CUDA device, not cpu'):
        Runtime(tiny, device="cpu", backend="tensorrt", policy="level", level=0.5)
