"""`iared-edge bench` and `iared_edge.bench`: what it times and reports, not how fast (that is
benchmarks/ and docs/benchmarks.md)."""

import json

import cv2
import numpy as np
import pytest
import torch

from iared_edge import load_model
from iared_edge.bench import bench_images, compare_speed, compare_speed_onnx, markdown, timed_ms
from iared_edge.cli import main
from iared_edge.demo import DigitsInClutter
from iared_edge.preprocess import model_input


@pytest.fixture(scope="module")
def demo():
    return load_model("demo").eval()


def test_compare_speed_reports_what_each_image_keeps_alone(demo):
    x, what = bench_images(demo, 4)
    assert "demo-task test images" in what
    rows = compare_speed(demo, x, (1, 2), repeats=1)
    assert [r["batch"] for r in rows] == [1, 2]
    # the reference: every image through the model on its own, its keep and FLOPs counted from that
    with torch.inference_mode():
        alone = [demo(x[i : i + 1], policy="threshold") for i in range(4)]
        plain = demo.vit(x).argmax(-1)
    keep = torch.cat([o.keep_ratio for o in alone]).mean(0)
    bound = demo.flops()[0].item() / torch.cat([o.flops for o in alone]).mean().item()
    agree = np.mean([o.logits.argmax(-1).item() == plain[i].item() for i, o in enumerate(alone)])
    for r in rows:
        assert r["kept_per_stage"] == pytest.approx(keep.tolist(), abs=1e-6)
        assert r["flops_bound"] == pytest.approx(bound, rel=1e-9) and r["flops_bound"] > 1
        assert r["top1_agreement"] == pytest.approx(agree)
        assert r["plain_ms"] > 0 and r["iared_ms"] > 0
        assert r["speedup"] == pytest.approx(r["plain_ms"] / r["iared_ms"])
    table = markdown(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| 1 | ") and f"{rows[1]['flops_bound']:.2f}x" in table[3]


def test_compare_speed_onnx_times_two_graphs_that_decide_as_pytorch_does(demo):
    """Both sides as ONNX Runtime graphs: keeps and the FLOPs bound are the PyTorch model's (the
    float32 graphs keep the same tokens), and the top-1 agreement between the two float32 graphs
    is PyTorch's own; int8 graphs time too."""
    pytest.importorskip("onnxruntime")
    x, _ = bench_images(demo, 4)
    ref = compare_speed(demo, x, (1, 2), repeats=1)
    rows = compare_speed_onnx(demo, x, (1, 2), repeats=1)
    for r, t in zip(rows, ref):
        assert r["batch"] == t["batch"] and r["kept_per_stage"] == pytest.approx(t["kept_per_stage"])
        assert r["flops_bound"] == pytest.approx(t["flops_bound"])
        assert r["top1_agreement"] == pytest.approx(t["top1_agreement"])
        assert r["top1_agreement_with_pytorch"] == 1.0  # float32: the same answers
        assert r["plain_ms"] > 0 and r["iared_ms"] > 0 and r["speedup"] == pytest.approx(r["plain_ms"] / r["iared_ms"])
    level = compare_speed_onnx(demo, x, (2,), policy="level", level=0.5, repeats=1, int8=True)
    assert level[0]["kept_per_stage"] == pytest.approx(
        compare_speed(demo, x, (2,), policy="level", level=0.5, repeats=1)[0]["kept_per_stage"]
    )
    with pytest.raises(ValueError, match="policy must be one of"):
        compare_speed_onnx(demo, x, (1,), policy="all")
    half = load_model("demo").to(torch.bfloat16)  # exported from a float32 copy; the caller's model is left alone
    assert compare_speed_onnx(half, x, (1,), repeats=1)[0]["batch"] == 1
    assert next(half.parameters()).dtype == torch.bfloat16


def test_compare_speed_policy_ratio_keeps_fixed_counts(tiny, images):
    rows = compare_speed(tiny, images, (1,), policy="level", level=0.5, repeats=1)
    with torch.inference_mode():
        out = tiny(images[:1], policy="level", level=0.5)
    assert rows[0]["kept_per_stage"] == pytest.approx(out.keep_ratio[0].tolist())
    assert rows[0]["flops_bound"] == pytest.approx(tiny.flops()[0].item() / out.flops[0].item())


def test_compare_speed_rejects_bad_arguments(tiny, images):
    with pytest.raises(ValueError, match="batch size 8 is larger than the 3 images"):
        compare_speed(tiny, images, (1, 8))
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        compare_speed(tiny, images, (0,))
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        compare_speed(tiny, images, (1,), repeats=0)
    with pytest.raises(ValueError, match="policy must be one of"):
        compare_speed(tiny, images, (1,), policy="all")


def test_timed_ms_counts_the_sync():
    calls = []
    assert timed_ms(lambda: calls.append("fn"), lambda: calls.append("sync")) >= 0
    assert calls == ["fn", "sync"]


def test_bench_images_cycle_a_folder_and_default_to_the_demo_task(demo, tiny, tmp_path):
    x, _ = bench_images(demo, 3)
    imgs = DigitsInClutter("test", seed=0).batch(range(3))[0]
    assert torch.equal(x, torch.cat([model_input(demo, im) for im in imgs]))
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((64, 64, 3), 60 * i + 30, np.uint8))
    x, what = bench_images(tiny, 5, str(tmp_path))
    assert x.shape == (5, 3, 224, 224) and "2 images of" in what
    assert torch.equal(x[0], x[2]) and torch.equal(x[1], x[3]) and not torch.equal(x[0], x[1])
    x, what = bench_images(tiny, 2)
    assert "bundled photo" in what and torch.equal(x[0], x[1])


def test_cli_bench_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert (
        main(["bench", "--count", "2", "--batch", "1,2", "--repeats", "1", "--device", "cpu", "--json", str(path)]) == 0
    )
    out = capsys.readouterr().out
    assert "model: demo" in out and "| batch | plain ms / batch |" in out and "FLOPs bound" in out
    saved = json.loads(path.read_text())
    assert saved["model"] == "demo" and [r["batch"] for r in saved["rows"]] == [1, 2]
    assert saved["weights"] == "float32"


def test_cli_bench_onnxruntime_int8(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                "--count",
                "2",
                "--batch",
                "1,2",
                "--repeats",
                "1",
                "--backend",
                "onnxruntime",
                "--precision",
                "int8",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "weights: int8  onnxruntime" in out and "one image per run" in out and "| 2 | " in out
    assert "top-1 (int8) equals the float32 PyTorch model's on " in out
    saved = json.loads(path.read_text())
    assert saved["weights"] == "int8" and saved["backend"].startswith("onnxruntime")
    for args, message in [
        (["--precision", "int8"], "add --backend onnxruntime"),
        (["--backend", "onnxruntime", "--precision", "bf16"], "--precision fp32 or int8"),
        (["--backend", "onnxruntime", "--device", "cuda"], "--device cpu"),
    ]:
        assert main(["bench", "--count", "1", "--batch", "1", *args]) == 2
        assert message in capsys.readouterr().err


def test_cli_bench_checks_its_arguments(capsys):
    assert main(["bench", "--count", "1", "--batch", "1,2"]) == 2
    assert "at most --count (1)" in capsys.readouterr().err
    assert main(["bench", "--batch", "one"]) == 2
    assert "--batch: expected comma-separated integers" in capsys.readouterr().err
    assert main(["bench", "--images", "/no/such/folder"]) == 2
    assert "no such image folder" in capsys.readouterr().err
    assert main(["bench", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_cli_bench_warns_when_iared_is_slower(monkeypatch, capsys):
    import iared_edge.bench as bench

    def slower(model, images, batches, **kwargs):
        return [
            {
                "batch": b,
                "plain_ms": 10.0,
                "iared_ms": 12.5,
                "speedup": 0.8,
                "flops_bound": 2.0,
                "kept_per_stage": [0.5, 0.5, 0.5],
                "top1_agreement": 1.0,
            }
            for b in batches
        ]

    monkeypatch.setattr(bench, "compare_speed", slower)
    assert main(["bench", "--count", "2", "--batch", "1,2", "--repeats", "1"]) == 0
    out = capsys.readouterr()
    assert "| 1 | 10.00 | 12.50 | 0.80x | 2.00x | 0.40 |" in out.out
    assert "warning: IA-RED² was slower than the plain backbone at batch 1, 2" in out.err
