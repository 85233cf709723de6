import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from iared_edge.cli import main
from iared_edge.preprocess import ASSETS, load_rgb, overlay, to_tensor


def test_predict_writes_heatmap(tmp_path, capsys):
    out = tmp_path / "h.png"
    assert main(["predict", "--model", "deit_tiny_patch16_224", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("%  ") == 5 and "kept per stage" in text
    from PIL import Image

    im = np.asarray(Image.open(out))
    assert im.shape == (224, 448, 3) and im[:, 224:].std() > 0


def test_version_and_info_name_the_package_version(capsys):
    from iared_edge import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"iared-edge {__version__}"
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"iared-edge {__version__};") and "ops backend: cpu -> " in text
    assert "int8 dot product: " in text and "onnxruntime" in text
    # `python -m iared_edge` is the same command line
    run = subprocess.run([sys.executable, "-m", "iared_edge", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"iared-edge {__version__}"


def test_predict_notes_random_weights_only_for_untrained_models(tmp_path, capsys):
    out = str(tmp_path / "h.png")
    assert main(["predict", "--model", "deit_tiny_patch16_224", "--out", out]) == 0
    assert "random weights" in capsys.readouterr().out
    assert main(["predict", "--model", "demo", "--out", out]) == 0  # the trained, bundled model
    text = capsys.readouterr().out
    assert "random weights" not in text and "model: demo" in text


def test_predict_in_reduced_precision_reads_a_digit_as_float32_does(tmp_path, capsys):
    import cv2

    from iared_edge.demo import DigitsInClutter

    img, _, _ = DigitsInClutter("test", seed=1).sample(3)
    path = str(tmp_path / "digit.png")
    cv2.imwrite(path, img[..., ::-1])
    tops = {}
    for precision in ("fp32", "bf16"):
        assert (
            main(
                [
                    "predict",
                    path,
                    "--model",
                    "demo",
                    "--policy",
                    "all",
                    "--precision",
                    precision,
                    "--out",
                    str(tmp_path / f"{precision}.png"),
                ]
            )
            == 0
        )
        lines = capsys.readouterr().out.splitlines()
        assert {"fp32": "weights: float32", "bf16": "weights: bfloat16"}[precision] in lines[0]
        tops[precision] = lines[2].split()[-1]  # "  97.12%  7": the best label, after the image's path
    assert tops["fp32"] == tops["bf16"] and tops["fp32"] in [str(d) for d in range(10)]


def test_predict_many_images_reads_each_as_alone(tmp_path, capsys):
    """Files and folders together, in batches whose images keep their own tokens: each image's
    answer is the one `predict` gives it alone; one PNG per image, repeated names made unique."""
    import cv2

    from iared_edge.demo import DigitsInClutter

    imgs, _, _ = DigitsInClutter("test", seed=1).batch(range(5))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [
        tmp_path / "a" / "0.png",
        tmp_path / "a" / "1.PNG",
        tmp_path / "b" / "0.png",
        tmp_path / "b" / "2.jpg",
        tmp_path / "single.png",
    ]
    for img, p in zip(imgs, paths):
        cv2.imwrite(str(p), img[..., ::-1])

    def answers(text):
        lines = text.splitlines()
        return {line[:-1]: lines[i + 1].split()[-1] for i, line in enumerate(lines) if line.endswith(":")}

    out = tmp_path / "maps"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                str(paths[4]),
                "--model",
                "demo",
                "--batch",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    together = answers(capsys.readouterr().out)
    assert sorted(together) == sorted(str(p) for p in paths)
    assert sorted(os.listdir(out)) == ["0-2.png", "0.png", "1.png", "2.png", "single.png"]
    for p in paths:
        assert main(["predict", str(p), "--model", "demo", "--out", str(tmp_path / "one.png")]) == 0
        assert answers(capsys.readouterr().out) == {str(p): together[str(p)]}
    # an unreadable image among several is skipped and reported, the others are answered; exit 1
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["predict", str(tmp_path / "b"), "--model", "demo", "--out", str(tmp_path / "maps2")]) == 1
    err = capsys.readouterr()
    assert "broken.png: not a readable image" in err.err and "1 of 3 images unreadable, skipped" in err.err
    assert sorted(answers(err.out)) == [str(paths[2]), str(paths[3])]
    assert sorted(os.listdir(tmp_path / "maps2")) == ["0.png", "2.png"]
    assert main(["predict", str(tmp_path / "b"), str(tmp_path / "empty_is_not_here")]) == 2
    assert "no such image file" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "a"), "--batch", "0"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty")]) == 2
    assert "no .jpg/.jpeg/.png/.bmp images found" in capsys.readouterr().err


def test_predict_bad_image_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    assert main(["predict", str(bad), "--model", "deit_tiny_patch16_224"]) == 2
    assert "bad.jpg: not a readable image" in capsys.readouterr().err
    assert main(["predict", "missing.jpg", "--model", "deit_tiny_patch16_224"]) == 2
    err = capsys.readouterr()
    assert "no such image file: missing.jpg" in err.err
    assert "random weights" not in err.out  # the image is checked before the model is built


def test_bad_model_names_are_clear_errors(tmp_path, capsys):
    assert main(["predict", "--model", "deit_smal_patch16_224"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'deit_smal_patch16_224'" in err and "deit_small_patch16_224" in err  # closest name
    assert main(["predict", "--model", "no_such_net"]) == 2
    assert "unknown model 'no_such_net'" in capsys.readouterr().err
    weights = tmp_path / "deit.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    assert main(["predict", "--model", str(weights)]) == 2  # a weights file given as the model
    assert "deit.pth: not a model saved by save_model" in capsys.readouterr().err


def test_calibrate_checks_its_arguments_before_reading_images(tmp_path, capsys):
    assert main(["calibrate", "--model", "demo", "--images", str(tmp_path), "--keep", "1.5"]) == 2
    assert "--keep must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["calibrate", "--model", "demo", "--images", str(tmp_path / "nope")]) == 2
    assert "no such image folder" in capsys.readouterr().err
    assert main(["calibrate", "--model", "demo", "--images", str(tmp_path), "--limit", "0"]) == 2
    assert "--limit and --batch must be >= 1" in capsys.readouterr().err


def test_preprocess_matches_timm_eval_transform():
    from PIL import Image
    from timm.data import create_transform

    rgb = load_rgb(os.path.join(ASSETS, "squirrel_cls.jpg"))
    ours = to_tensor(rgb, (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875)
    ref = create_transform(224, interpolation="bilinear", crop_pct=0.875)(Image.fromarray(rgb))[None]
    assert ours.shape == ref.shape
    # resampling kernels differ (torch antialias vs PIL, which also rounds to uint8): a few grey
    # levels apart; a wrong crop or scale would break the correlation
    assert (ours - ref).abs().mean() * 0.226 < 6 / 255
    assert torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1] > 0.99


def test_preprocess_and_overlay_reject_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((10, 10, 3), np.float32), (224, 224), (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match="H x W x 3"):
        to_tensor(np.zeros((10, 10), np.uint8), (224, 224), (0,) * 3, (1,) * 3)
    red = np.zeros((32, 32, 3), np.uint8)
    red[...] = (200, 40, 40)
    img = overlay(red, np.zeros((2, 2)), np.array([[1, 0], [1, 1]], bool)).astype(int)
    colour = lambda a: np.ptp(a, axis=-1).mean()  # noqa: E731
    assert colour(img[:16, 16:]) < colour(img[:16, :16])  # the dropped patch is greyed
    assert abs(img[:16, 16:].mean() - img[:16, :16].mean()) <= 1  # not darkened: its ink stays legible
    assert np.array_equal(img[:16, :16], red[:16, :16].astype(int))  # a kept cold patch is untouched


def test_package_works_without_the_extension():
    code = (
        "import sys, warnings, torch\n"
        "sys.modules['iared_edge._C'] = None\n"  # makes `import iared_edge._C` fail
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from iared_edge import IARedViT, ops\n"
        "    assert ops.backend('cpu') == 'torch'\n"
        "    m = IARedViT.from_timm('deit_tiny_patch16_224').eval()\n"
        "    x = torch.randn(2, 3, 224, 224)\n"
        "    with torch.no_grad():\n"
        "        assert (m(x, policy='all').logits - m.vit(x)).abs().max() < 1e-5\n"
        "        o = m(x, policy='level', level=0.5)\n"
        "        m(x)\n"
        "    assert o.kept_counts.tolist() == [[98, 49, 25]] * 2\n"
        "n = sum('not built' in str(x.message) for x in w)\n"
        "assert n == 1, n\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_cpu_int8_dot_reads_x86_and_arm_flags(tmp_path):
    from iared_edge.devices import cpu_int8_dot

    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimddp\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n")
    assert cpu_int8_dot(str(x86)) == "AVX512-VNNI"
    assert cpu_int8_dot(str(arm)) == "ARM dot product"
    assert cpu_int8_dot(str(old)) is None
    assert cpu_int8_dot(str(tmp_path / "missing")) is None
