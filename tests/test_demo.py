"""The demo task's generator, the heatmap methods and metrics, and the `make-digits` / `eval` CLI."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from iared_edge import IARedViT, explain, save_model
from iared_edge.cli import main as cli
from iared_edge.demo import DigitsInClutter, read_boxes, write_dataset
from iared_edge.demo.digits import SPLIT_COLUMNS, Composition


def test_generator_is_deterministic_and_seeded():
    a, b = DigitsInClutter("train", seed=3), DigitsInClutter("train", seed=3)
    for i in (0, 17, 123456):
        ia, la, ba = a.sample(i, 0.7)
        ib, lb, bb = b.sample(i, 0.7)
        assert np.array_equal(ia, ib) and la == lb and ba == bb
    other = DigitsInClutter("train", seed=4).sample(0, 0.7)[0]
    assert not np.array_equal(a.sample(0, 0.7)[0], other)
    img, label, box = a.sample(5)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8 and 0 <= label <= 9


def test_training_photos_are_recoloured_without_moving_the_digit():
    """Train images get re-coloured photos (its own random stream: label and box unchanged);
    val and test images show the photos as they are, by default."""
    aug, plain = DigitsInClutter("train", seed=1), DigitsInClutter("train", seed=1, augment=False)
    changed = 0
    for i in range(20):
        (ia, la, ba), (ip, lp, bp) = aug.sample(i), plain.sample(i)
        assert la == lp and ba == bp
        changed += np.abs(ia.astype(int) - ip.astype(int)).mean() > 8  # beyond the +-4 sensor noise
    assert changed >= 10
    for split in ("val", "test"):
        a, b = DigitsInClutter(split, seed=1), DigitsInClutter(split, seed=1, augment=False)
        assert not a.augment and all(np.array_equal(a.sample(i)[0], b.sample(i)[0]) for i in range(5))
    assert aug.augment


def test_recolour_keeps_shape_and_varies():
    from iared_edge.demo.digits import recolour

    rng = np.random.default_rng(0)  # a photo whose channels differ: blue-ish dark, red-ish bright
    photo = np.clip(rng.normal((40, 120, 210), 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    outs = [recolour(np.random.default_rng(k), photo, [photo[::-1]]) for k in range(12)]
    assert all(o.shape == photo.shape and o.dtype == np.uint8 for o in outs)
    assert len({o.tobytes() for o in outs}) == 12
    # Colour statistics move: some variant's per-channel means differ from the photo's by a lot.
    assert max(np.abs(o.reshape(-1, 3).mean(0) - photo.reshape(-1, 3).mean(0)).max() for o in outs) > 20


def test_recolour_turns_and_flips_square_crops():
    """A square crop is also turned by quarter turns and flipped: a mark in one corner of the photo
    ends up in each of the four corners across variants (found as the pixels unlike the rest,
    whatever the colour change did)."""
    from iared_edge.demo.digits import recolour

    photo = np.full((32, 32, 3), 60, np.uint8)
    photo[2:10, 2:10] = 230
    corners = set()
    for k in range(24):
        out = recolour(np.random.default_rng(k), photo, distractors=0.0).astype(int).sum(2)
        odd = np.abs(out - np.median(out)) > 30
        ys, xs = np.nonzero(odd)
        assert len(ys) == 64, "the mark keeps its size"
        corners.add((ys.mean() > 16, xs.mean() > 16))
    assert len(corners) == 4
    wide = np.zeros((20, 32, 3), np.uint8)
    assert recolour(np.random.default_rng(0), wide).shape == wide.shape


def test_distractors_draw_busy_clutter_deterministically():
    """`add_distractors` draws lines, grids, boxes, ellipses and strokes: same shape and dtype,
    the same drawing for the same random stream, a different one for another, the input left
    alone; `recolour` applies it to about DISTRACTOR_P of crops."""
    from iared_edge.demo.digits import DISTRACTOR_P, add_distractors, recolour

    photo = np.full((64, 64, 3), 128, np.uint8)
    before = photo.copy()
    outs = [add_distractors(np.random.default_rng(k), photo) for k in range(10)]
    assert np.array_equal(photo, before)
    assert all(o.shape == photo.shape and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[0], add_distractors(np.random.default_rng(0), photo))
    assert len({o.tobytes() for o in outs}) == 10
    changed = [(o != photo).any(2).mean() for o in outs]
    assert min(changed) > 0.005 and max(changed) < 0.9  # clutter over the photo, not a new photo
    # Within recolour, at the default rate; never with distractors=0 (a flat photo stays flat:
    # every colour change maps one value to one value).
    flat = [recolour(np.random.default_rng(k), photo) for k in range(200)]
    drawn = np.mean([len(np.unique(o.reshape(-1, 3), axis=0)) > 1 for o in flat])
    assert abs(drawn - DISTRACTOR_P) < 0.12
    assert all(
        len(np.unique(recolour(np.random.default_rng(k), photo, distractors=0.0).reshape(-1, 3), axis=0)) == 1
        for k in range(50)
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_boxes_are_tight_around_the_ink(split):
    """On a black background (clutter 0) the ink is the only bright thing: every clearly bright
    pixel lies in the box, and each edge of the box touches ink."""
    gen = DigitsInClutter(split, seed=1)
    for i in range(40):
        img, _, (x0, y0, x1, y1) = gen.sample(i, clutter=0.0)
        v = img.max(2).astype(int)
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        ys, xs = np.nonzero(v > 0.2 * 255 + 5)  # alpha > 0.2 at full contrast, plus noise
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        ink = v > 0.2 * 0.7 * 175 - 5  # the faintest ink the generator draws
        assert ink[y0:y1, x0].any() and ink[y0:y1, x1 - 1].any() and ink[y0, x0:x1].any() and ink[y1 - 1, x0:x1].any()
        assert (x1 - x0) * (y1 - y0) < 0.25 * 224 * 224  # most patches are background


def test_splits_share_no_digits_or_photos():
    train, test = DigitsInClutter("train"), DigitsInClutter("test")
    assert not set(SPLIT_COLUMNS["train"]) & set(SPLIT_COLUMNS["test"])
    assert not set(train.background_names) & set(test.background_names)
    flat = lambda g: {d.tobytes() for d in g.digits.reshape(-1, 400)}
    assert not flat(train) & flat(test)
    assert len(train) == 4000 and len(test) == 500


def _photos_seen(gen, n):
    """Each photo of `gen` (augment off) replaced by a flat colour of its own: for images 0..n-1,
    the photo whose colour the pixels away from the digit have (None: no photo's, within 4)."""
    colours = [40 + 50 * k for k in range(len(gen.background_names))]
    gen.backgrounds = [np.full((300, 300, 3), c, np.uint8) for c in colours]
    seen = []
    for i in range(n):
        img, _, (x0, y0, x1, y1) = gen.sample(i)
        outside = np.ones(img.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        hits = [name for name, c in zip(gen.background_names, colours) if abs(np.median(img[outside]) - c) <= 4]
        seen.append(hits[0] if hits else None)
    return seen


def test_background_of_names_the_photo_each_image_is_drawn_on():
    """Each photo replaced by a flat colour of its own: the image's pixels away from the digit
    have the colour of the photo `background_of` names."""
    gen = DigitsInClutter("test", augment=False)
    seen = _photos_seen(gen, 40)
    assert seen == [gen.background_of(i) for i in range(40)]
    assert set(seen) == set(gen.background_names)


def test_crop_of_gives_each_images_photo_and_crop_share():
    """Each photo replaced by a horizontal ramp (pixel value = column, 0-255): the range of the
    ground's values along rows clear of the digit is the crop's side, so share x 255."""
    gen = DigitsInClutter("test", augment=False)
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (256, 256, 3)).copy()
    gen.backgrounds = [ramp] * len(gen.background_names)
    shares = []
    for i in range(30):
        img, _, (x0, y0, x1, y1) = gen.sample(i)
        rows = [r for r in range(img.shape[0]) if r < y0 or r >= y1]
        profile = np.median(img[rows].astype(float).mean(2), axis=0)  # per column, noise averaged out
        photo, share = gen.crop_of(i)
        assert photo == gen.background_of(i)
        assert abs((profile.max() - profile.min()) / 255 - share) < 0.03, (i, share)
        shares.append(share)
    assert 0.45 <= min(shares) and max(shares) <= 1.0 and np.ptp(shares) > 0.3


def test_photo_weights_set_how_often_each_photo_is_drawn():
    """`photo_weights`: photos are drawn in proportion to their weights (a weight of 0: never),
    deterministically, and `background_of` still names the photo each image is drawn on."""
    w = {"board": 0.0, "building": 3.0, "smarties": 1.0, "starry_night": 0.0}
    gen = DigitsInClutter("test", augment=False, photo_weights=w)
    names = [gen.background_of(i) for i in range(600)]
    assert set(names) == {"building", "smarties"}
    assert names.count("building") / 600 == pytest.approx(0.75, abs=0.06)  # 5 binomial s.d.
    again = DigitsInClutter("test", augment=False, photo_weights=w)
    assert all(np.array_equal(gen.sample(i)[0], again.sample(i)[0]) for i in (0, 9))
    assert _photos_seen(gen, 12) == names[:12]
    # without weights: the default stream, unchanged by the option's existence
    plain = DigitsInClutter("test", augment=False)
    assert plain.photo_p is None
    assert [plain.background_of(i) for i in range(200)] != names[:200]


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"board": 1, "building": 1, "smarties": 1}, "without a weight: \\['starry_night'\\]"),
        (
            {"board": 1, "building": 1, "smarties": 1, "starry_night": 1, "graf1": 1},
            "not photos of this split: \\['graf1'\\]",
        ),
        ({"board": 1, "building": -1, "smarties": 1, "starry_night": 1}, "bad: \\['building'\\]"),
        ({"board": 0, "building": 0, "smarties": 0, "starry_night": 0}, "not all 0"),
        ({"board": float("nan"), "building": 1, "smarties": 1, "starry_night": 1}, "bad: \\['board'\\]"),
    ],
)
def test_photo_weights_are_checked(weights, match):
    with pytest.raises(ValueError, match=match):
        DigitsInClutter("test", photo_weights=weights)


def test_photo_weights_file_reaches_every_phase_that_draws_training_images(tmp_path, monkeypatch):
    """--photo-weights: what the training generator gets (backbone phase,
    interpreters and fine-tune loaders, all through generator_kwargs); a weights file that is not
    such JSON is refused by name."""
    from iared_edge.demo import train

    names = DigitsInClutter("train").background_names
    w = {n: float(k % 3) for k, n in enumerate(names)}
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"weights": w}))
    assert train.read_photo_weights(str(path)) == w and train.read_photo_weights("") is None
    seen = []
    real = train.DigitsInClutter

    def recording(split, *args, **kwargs):
        seen.append((split, kwargs.get("photo_weights")))
        return real(split, *args, **kwargs)

    monkeypatch.setattr(train, "DigitsInClutter", recording)
    s = train.Schedule(batch=2, small_steps=1, small_black=0, small_fade=1, warmup=1, photo_weights=str(path))
    loader = train.interpreter_batches("train", 2, 0, **train.generator_kwargs(s))
    x, y = next(loader)
    loader.close()
    assert seen == [("train", w)] and x.shape == (2, 3, 224, 224)
    monkeypatch.setattr(train, "MONITOR_IMAGES", 4)
    seen.clear()
    (tmp_path / "run").mkdir()
    train.train_backbone(str(tmp_path / "run"), "small", s, init=None)
    train_draws = [wt for split, wt in seen if split == "train"]
    assert train_draws and all(d == w for d in train_draws)
    bad = tmp_path / "bad.json"
    bad.write_text('{"board": 1}')
    with pytest.raises(ValueError, match="bad.json"):
        train.read_photo_weights(str(bad))
    with pytest.raises(ValueError, match="missing.json"):
        train.read_photo_weights(str(tmp_path / "missing.json"))


def test_drop_path_and_label_smoothing_reach_the_backbone_phase(monkeypatch, tmp_path):
    """--drop-path sets the backbone's stochastic depth (0.05 unless asked: what runs/demo to demo31
    trained with); a value outside [0, 1) for it or --label-smoothing is refused by name."""
    import timm

    from iared_edge.demo import train

    built = []
    real = timm.create_model

    class Built(Exception):
        pass

    def recording(name, **kwargs):
        built.append(real(name, **kwargs))
        raise Built

    monkeypatch.setattr(timm, "create_model", recording)
    for rate in (0.05, 0.0, 0.3):
        with pytest.raises(Built):
            train.train_backbone(str(tmp_path), "small", train.Schedule(drop_path=rate))
    probs = [[float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in m.blocks] for m in built]
    assert probs[0][-1] == pytest.approx(0.05) and probs[2][-1] == pytest.approx(0.3)
    assert all(p == 0.0 for p in probs[1]) and probs[2][0] == 0.0
    assert train.Schedule().drop_path == 0.05
    for bad in (dict(drop_path=1.0), dict(drop_path=-0.1), dict(label_smoothing=1.2)):
        with pytest.raises(ValueError, match="--drop-path and --label-smoothing"):
            train.train_backbone(str(tmp_path), "small", train.Schedule(**bad))


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(size=8), "size must be an int >= 16"),
        (dict(size=224.0), "size must be an int"),
        (dict(min_digit=0), "min_digit"),
        (dict(min_digit=120, max_digit=100), "min_digit <= max_digit"),
        (dict(max_digit=300), "max_digit <= size"),
        (dict(max_rotation=-1), "max_rotation"),
    ],
)
def test_composition_refuses_bad_fields_by_name(fields, match):
    with pytest.raises(ValueError, match=match):
        Composition(**fields)


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        DigitsInClutter("holdout")
    with pytest.raises(ValueError, match="clutter"):
        DigitsInClutter("val").sample(0, clutter=1.5)


def test_write_dataset_matches_the_generator(tmp_path):
    write_dataset(str(tmp_path), sizes={"val": 6, "test": 5}, seed=2, progress=False)
    boxes = read_boxes(str(tmp_path))
    assert len(boxes) == 11
    gen = DigitsInClutter("test", seed=2)
    for i in range(5):
        img, label, box = gen.sample(i)
        rel = f"test/{label}/{i:06d}.png"
        assert boxes[rel] == box
        on_disk = cv2.cvtColor(cv2.imread(str(tmp_path / rel)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(on_disk, img)  # PNG is lossless


def test_box_overlap_against_a_pixel_loop():
    box = (13.0, 40.5, 70.0, 47.0)
    ov = explain.box_overlap(box, (14, 14), (16, 16))
    px = np.zeros((224, 224))
    px[41:47, 13:70] = 1.0  # pixel centres inside the box
    px[40, 13:70] = 0.5  # half-covered row
    ref = px.reshape(14, 16, 14, 16).mean((1, 3))
    assert np.allclose(ov.numpy(), ref)
    heat = torch.zeros(14, 14)
    heat[2, 1] = 1.0  # a patch the box crosses
    assert explain.pointing_hit(heat, ov) and explain.energy_in_box(heat, ov) == pytest.approx(ov[2, 1].item())
    heat = torch.zeros(14, 14)
    heat[10, 10] = 1.0
    assert not explain.pointing_hit(heat, ov) and explain.energy_in_box(heat, ov) == 0.0


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return IARedViT.from_timm("iared_digits_tiny", depth=3, groups=(1, 1, 1), labels=[str(d) for d in range(10)]).eval()


def test_attention_maps_match_timm(small_model):
    """Our attention capture equals the softmax timm's own (unfused) attention computes."""
    vit = small_model.vit
    x = torch.randn(2, 3, 224, 224)
    captured = []
    hooks = []
    for blk in vit.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o)))
    with torch.no_grad():
        vit(x)
    for h in hooks:
        h.remove()
    for blk in vit.blocks:
        blk.attn.fused_attn = True
    ours = explain.attention_maps(small_model, x)
    assert len(ours) == len(captured)
    for a, b in zip(ours, captured):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_rollout_against_float64_loop(small_model):
    x = torch.randn(1, 3, 224, 224)
    maps = [a[0].double().mean(0) for a in explain.attention_maps(small_model, x)]
    L = maps[0].shape[0]
    joint = np.eye(L)
    for a in maps:
        a = 0.5 * a.numpy() + 0.5 * np.eye(L)
        joint = (a / a.sum(1, keepdims=True)) @ joint
    ref = joint[0, 1:].reshape(14, 14)
    assert np.allclose(explain.rollout_heatmap(small_model, x)[0].numpy(), ref, atol=1e-5)
    given = explain.attention_maps(small_model, x)  # a caller's maps give the same heatmaps
    assert torch.equal(explain.rollout_heatmap(small_model, x, maps=given), explain.rollout_heatmap(small_model, x))
    assert torch.equal(explain.attention_heatmap(small_model, x, maps=given), explain.attention_heatmap(small_model, x))


def test_eval_runs_the_attention_pass_once_per_batch_for_both_baselines(tmp_path, small_model, monkeypatch):
    write_dataset(str(tmp_path), sizes={"test": 6}, progress=False)
    calls = []
    real = explain.attention_maps
    monkeypatch.setattr(explain, "attention_maps", lambda m, x: calls.append(len(x)) or real(m, x))
    s = explain.evaluate_boxes(
        small_model, str(tmp_path), methods=("attention", "rollout"), curve_images=0, batch=4, progress=False
    )
    assert calls == [4, 2] and set(s["methods"]) == {"attention", "rollout"}


def test_gradcam_and_interpreter_heatmaps_have_the_grid_shape(small_model):
    x = torch.randn(2, 3, 224, 224)
    for name, fn in explain.HEATMAPS.items():
        h = fn(small_model, x)
        assert h.shape == (2, 14, 14) and torch.isfinite(h).all() and (h >= 0).all(), name
    with pytest.raises(ValueError, match="images must be"):
        explain.rollout_heatmap(small_model, torch.randn(2, 3, 112, 112))


def test_deletion_insertion_endpoints(small_model):
    x = torch.randn(3, 224, 224)
    heat = torch.rand(14, 14)
    d, ins = explain.deletion_insertion(small_model, x, heat, label=3, steps=7)
    with torch.no_grad():
        p = small_model(x[None], policy="all").logits.softmax(-1)[0, 3].item()
        pb = small_model(explain._blur(x[None]), policy="all").logits.softmax(-1)[0, 3].item()
    assert d.shape == ins.shape == (8,)
    assert d[0] == pytest.approx(p, abs=1e-5) and ins[-1] == pytest.approx(p, abs=1e-5)
    assert d[-1] == pytest.approx(pb, abs=1e-5) and ins[0] == pytest.approx(pb, abs=1e-5)
    assert explain.auc(np.array([0.0, 1.0])) == 0.5


def test_map_box_follows_the_preprocessing_crop():
    # 300 x 200 (h x w) image, 224 input, crop_pct 0.875: short side to 256, centre crop.
    x0, y0, x1, y1 = explain.map_box((0, 150, 200, 300), (300, 200), (224, 224), 0.875)
    assert x0 == pytest.approx(-16) and x1 == pytest.approx(240)
    assert y1 == pytest.approx(384 - (384 - 224) // 2)


def test_make_digits_and_eval_cli(tmp_path, small_model, capsys):
    data, model_path = tmp_path / "d", tmp_path / "m.safetensors"
    assert cli(["make-digits", "--out", str(data), "--train", "0", "--val", "0", "--test", "12", "--quiet"]) == 0
    save_model(small_model, str(model_path))
    out = tmp_path / "report"
    assert (
        cli(
            [
                "eval",
                "--model",
                str(model_path),
                "--data",
                str(data),
                "--curve-images",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["images"] == 12 and set(summary["methods"]) == set(explain.METHODS)
    assert len(summary["files"]) == 12 and all(f.startswith("test/") for f in summary["files"])
    # the curve images span the split (its files sort by class), not its first files
    assert summary["curve_files"] == [summary["files"][0], summary["files"][-1]]
    for r in summary["methods"].values():  # the per-image values the means are made of
        assert len(r["pointing_hits"]) == 12 and np.mean(r["pointing_hits"]) == pytest.approx(r["pointing"])
        assert len(r["deletion_aucs"]) == 2 and np.mean(r["deletion_aucs"]) == pytest.approx(r["deletion_auc"])
        assert np.mean(r["insertion_aucs"]) == pytest.approx(r["insertion_auc"])
    assert os.path.getsize(str(out) + ".png") > 1000
    assert "pointing game" in capsys.readouterr().out
    assert cli(["eval", "--model", str(model_path), "--data", str(tmp_path / "nowhere")]) == 2
    assert "boxes" in capsys.readouterr().err
    # no curves asked for: no AUC (null in the JSON, not NaN), no figure
    out0 = tmp_path / "report0"
    assert (
        cli(
            [
                "eval",
                "--model",
                str(model_path),
                "--data",
                str(data),
                "--curve-images",
                "0",
                "--out",
                str(out0),
                "--quiet",
            ]
        )
        == 0
    )
    summary0 = json.loads((tmp_path / "report0.json").read_text())
    assert all(r["deletion_auc"] is None and r["curve_images"] == 0 for r in summary0["methods"].values())
    assert summary0["methods"]["interpreter"]["pointing"] == summary["methods"]["interpreter"]["pointing"]
    assert not os.path.exists(str(out0) + ".png") and "not measured" in capsys.readouterr().out
    assert cli(["eval", "--model", str(model_path), "--data", str(data), "--curve-images", "-1"]) == 2
    assert "curve_images" in capsys.readouterr().err
    assert cli(["eval", "--model", str(model_path), "--data", str(data), "--limit", "0"]) == 2
    assert "limit must be >= 1" in capsys.readouterr().err
    assert cli(["make-digits", "--out", str(tmp_path / "neg"), "--test", "-1", "--quiet"]) == 2
    assert "test: image count must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()  # the default 5,000 train images were not written first


def _run_sample(args):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "webcam_explain", os.path.join(os.path.dirname(__file__), "..", "samples", "webcam_explain.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(args)


def test_sample_runs_headless_on_the_bundled_clip(tmp_path, small_model, capsys):
    model_path = tmp_path / "m.safetensors"
    save_model(small_model, str(model_path))
    out = tmp_path / "annotated.mp4"
    assert (
        _run_sample(
            [
                "--source",
                "demo",
                "--model",
                str(model_path),
                "--headless",
                "--max-frames",
                "4",
                "--output",
                str(out),
                "--budget-ms",
                "500",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "annotated.json").read_text())
    assert len(summary["frames"]) == 4 and summary["stats"]["frames"] == 4
    assert {"label", "confidence", "keep_ratio", "latency_ms"} <= set(summary["frames"][0])
    assert 0.0 <= summary["clip_accuracy"] <= 1.0
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4


def test_sample_runs_in_reduced_precision(tmp_path, small_model):
    model_path = tmp_path / "m.safetensors"
    save_model(small_model, str(model_path))
    out = tmp_path / "bf16.mp4"
    assert (
        _run_sample(
            [
                "--source",
                "demo",
                "--model",
                str(model_path),
                "--headless",
                "--max-frames",
                "2",
                "--output",
                str(out),
                "--precision",
                "bf16",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "bf16.json").read_text())
    assert summary["stats"]["precision"] == "bf16" and len(summary["frames"]) == 2
    with pytest.raises(SystemExit):  # argparse names the choices
        _run_sample(["--source", "demo", "--headless", "--precision", "int4"])


def test_sample_runs_int8_onnxruntime_graphs(tmp_path, small_model):
    model_path = tmp_path / "m.safetensors"
    save_model(small_model, str(model_path))
    out = tmp_path / "int8.mp4"
    assert (
        _run_sample(
            [
                "--source",
                "demo",
                "--model",
                str(model_path),
                "--headless",
                "--max-frames",
                "3",
                "--output",
                str(out),
                "--backend",
                "onnxruntime",
                "--precision",
                "int8",
                "--budget-ms",
                "500",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "int8.json").read_text())
    assert summary["stats"]["precision"] == "int8" and summary["stats"]["backend"] == "onnxruntime"
    assert len(summary["frames"]) == 3
    out = tmp_path / "thresholds.mp4"  # no budget: the thresholds' graph, each frame keeping its own tokens
    assert (
        _run_sample(
            [
                "--source",
                "demo",
                "--model",
                str(model_path),
                "--headless",
                "--max-frames",
                "3",
                "--output",
                str(out),
                "--backend",
                "onnxruntime",
                "--precision",
                "int8",
            ]
        )
        == 0
    )
    assert len(json.loads((tmp_path / "thresholds.json").read_text())["frames"]) == 3


def test_sample_fits_a_wide_video_without_squashing_it(tmp_path, small_model):
    """--fit crop / letterbox on a 4:3 clip: both panels of the annotated video (the frame and its
    explanation, side by side under the text band) keep the frame's shape."""
    model_path = tmp_path / "m.safetensors"
    save_model(small_model, str(model_path))
    clip = os.path.join(os.path.dirname(__file__), "data", "vtest_short.avi")  # 384 x 288
    for fit in ("crop", "letterbox"):
        out = tmp_path / f"{fit}.mp4"
        assert (
            _run_sample(
                [
                    "--source",
                    clip,
                    "--model",
                    str(model_path),
                    "--headless",
                    "--max-frames",
                    "2",
                    "--output",
                    str(out),
                    "--fit",
                    fit,
                ]
            )
            == 0
        )
        ok, frame = cv2.VideoCapture(str(out)).read()
        assert ok
        panel_w = (frame.shape[1] - 4) / 2  # two panels 4 px apart
        panel_h = frame.shape[0] - int(70 * panel_w / 400)  # under the text band (70 px per 400 px of panel)
        assert abs(panel_w / panel_h - 4 / 3) < 0.01  # (the encoder may trim a pixel)
        assert len(json.loads((tmp_path / f"{fit}.json").read_text())["frames"]) == 2
    with pytest.raises(SystemExit):
        _run_sample(["--source", "demo", "--headless", "--fit", "stretch"])


def test_sample_bad_arguments_are_one_line_errors(tmp_path, capsys):
    """No traceback for a user's mistake: one line naming it, exit status 2."""
    cases = [
        (["--source", str(tmp_path / "missing.mp4")], "no such video file"),
        (["--budget-ms", "-3"], "budget_ms must be a positive number"),
        (["--model", "deit_tiny_patch16"], "unknown model 'deit_tiny_patch16'"),
        (["--output", str(tmp_path / "nowhere" / "x.mp4")], "no such folder"),
        (["--precision", "int8"], 'give backend="onnxruntime"'),
    ]  # int8 graphs are ONNX Runtime's
    for args, message in cases:
        assert _run_sample(["--source", "demo", "--headless", "--max-frames", "1", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("webcam_explain: error: ") and message in err and "Traceback" not in err
    for args in (["--max-frames", "0"], ["--reconnect", "-1"]):
        with pytest.raises(SystemExit):
            _run_sample(["--source", "demo", "--headless", *args])
        assert "must be >= " in capsys.readouterr().err


# The demo issue's smoke target: 90% on these images. The shipped model (runs/demo32) reads 94% of
# them (92.1% on 1,000 test images with every token, docs/demo.md), so the test asserts the target
# itself; a changed preprocessing path or a damaged file fails it.
SHIPPED_MODEL_MIN_ACCURACY = 0.90


def test_shipped_demo_model_meets_the_smoke_check():
    """The bundled fp16 model: loads, is small, reads 100 fixed held-out test images through the
    users' preprocessing path with policy "threshold" above the floor, and drops tokens."""
    from iared_edge import load_model
    from iared_edge.demo import DEMO_MODEL
    from iared_edge.preprocess import model_input

    assert os.path.getsize(DEMO_MODEL) <= 12_000_000  # the 12 MB, read as decimal (the stricter)
    model = load_model("demo")  # the documented short name for DEMO_MODEL
    imgs, labels, _ = DigitsInClutter("test", seed=0).batch(range(100))
    x = torch.cat([model_input(model, im) for im in imgs])
    with torch.no_grad():
        out = model(x, policy="threshold")
    acc = (out.logits.argmax(-1).numpy() == labels).mean()
    assert acc >= SHIPPED_MODEL_MIN_ACCURACY, acc
    assert out.keep_ratio.mean().item() < 0.9  # it does drop tokens


def test_shipped_demo_model_in_int8_reads_as_float32_does(tmp_path):
    """`Runtime(backend="onnxruntime", precision="int8")` on the bundled model: on the smoke
    check's 100 held-out images, through the users' path, the same top-1 as the float32 PyTorch
    Runtime at the same keep level on nearly every image, and above the smoke floor."""
    from iared_edge import Runtime, load_model

    model = load_model("demo").float()
    imgs, labels, _ = DigitsInClutter("test", seed=0).batch(range(100))
    frames = list(imgs)
    with (
        Runtime(model, policy="level", level=0.5, color="rgb") as rt32,
        Runtime(
            model,
            policy="level",
            level=0.5,
            color="rgb",
            backend="onnxruntime",
            precision="int8",
            onnx_cache=str(tmp_path),
        ) as rt8,
    ):
        a, b = rt32.batch(frames), rt8.batch(frames)
        assert rt8.stats()["precision"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep_counts.int8.onnx"]
    top32 = np.array([r.indices[0] for r in a])
    top8 = np.array([r.indices[0] for r in b])
    assert (top8 == top32).mean() >= 0.97
    assert (top8 == labels).mean() >= SHIPPED_MODEL_MIN_ACCURACY
    assert [r.stage_keep for r in a] == [r.stage_keep for r in b]  # policy "level": the same counts


def test_generator_survives_extreme_compositions():
    """Every glyph at the largest size and rotation still fits the image (a flat glyph once made
    the placement range negative and stopped a training run)."""
    gen = DigitsInClutter("train", composition=Composition(min_digit=100, max_digit=100, max_rotation=15))
    for i in range(300):
        img, _, (x0, y0, x1, y1) = gen.sample(i)
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224


def test_report_compares_reinforce_and_training_free_image_by_image(tmp_path):
    """The demo's REINFORCE report: both interpreters at the same keep per stage on the same test
    images, the paired difference consistent with the two accuracies."""
    from iared_edge import load_model
    from iared_edge.demo import DEMO_MODEL
    from iared_edge.demo.train import Schedule, report_phase

    model = load_model(DEMO_MODEL).float()
    r = report_phase(str(tmp_path), Schedule(), model, images=40)
    d = r["reinforce_minus_training_free"]
    assert d["images"] == 40
    assert d["accuracy_a"] == pytest.approx(r["reinforce"]["accuracy"])
    assert d["accuracy_b"] == pytest.approx(r["training_free_calibrated"]["accuracy"])
    assert d["difference"] == pytest.approx(d["accuracy_a"] - d["accuracy_b"])
    assert d["ci95_low"] <= d["difference"] <= d["ci95_high"] and 0 <= d["mcnemar_p"] <= 1
    for i in range(model.num_stages):  # calibrated to the same keep, on these very images
        assert r["training_free_calibrated"][f"keep{i + 1}"] == pytest.approx(r["target_keep"][i], abs=0.05)
    assert json.loads((tmp_path / "report.json").read_text())["images"] == 40


def test_training_batches_stop_their_worker_when_closed():
    """Closing the training data stream joins its generator thread (a thread left inside torch
    aborted the interpreter at exit after a finished phase)."""
    import threading

    from iared_edge.demo.train import batches

    before = threading.active_count()
    stream = batches("train", 5, 2, 112, lambda step: 1.0, seed=0, prefetch=1)
    step, x, y = next(stream)
    assert step == 5 and x.shape == (2, 3, 112, 112) and y.shape == (2,)
    stream.close()
    assert threading.active_count() == before


def test_training_batches_with_an_offset_are_later_batches():
    """`--data-offset`: a run continuing another's backbone sees batch k + offset at step k (new
    images for it), and the same images again when resumed."""
    from iared_edge.demo.train import batches

    full = lambda step: 1.0
    plain = batches("train", 5, 4, 112, full, seed=0)
    shifted = batches("train", 2, 4, 112, full, seed=0, offset=3)
    (s1, x1, y1), (s2, x2, y2) = next(plain), next(shifted)
    assert (s1, s2) == (5, 2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = next(batches("train", 2, 4, 112, full, seed=0))[1]
    assert not torch.equal(other, x2)
    plain.close(), shifted.close()


def test_training_batches_from_worker_processes_are_the_same_batches():
    """--workers: batches drawn by a pool of processes (for a GPU the one generator thread cannot
    feed) are the thread's batches, in step order, with the offset and the clutter schedule."""
    from iared_edge.demo.train import batches

    fade = lambda step: min(1.0, step / 4)
    one = batches("train", 1, 3, 112, fade, seed=0, offset=2)
    pool = batches("train", 1, 3, 112, fade, seed=0, offset=2, workers=2, prefetch=1)
    for _ in range(4):
        (s1, x1, y1), (s2, x2, y2) = next(one), next(pool)
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    one.close(), pool.close()
    with pytest.raises(ValueError, match="workers must be >= 0"):
        next(batches("train", 0, 2, 112, fade, seed=0, workers=-1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gives")
def test_backbone_phase_on_a_missing_gpu_is_a_clear_error(tmp_path):
    from iared_edge.demo import train

    s = train.Schedule(batch=2, small_steps=1, small_black=0, small_fade=1, warmup=1, device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train.train_backbone(str(tmp_path), "small", s)


@pytest.mark.gpu
def test_backbone_phase_trains_on_a_gpu_and_resumes_on_the_cpu(tmp_path, monkeypatch):
    """--device cuda --workers 2: a few steps on the GPU; the checkpoint resumes on the CPU."""
    import dataclasses

    from iared_edge.demo import train

    monkeypatch.setattr(train, "MONITOR_IMAGES", 4)
    s = train.Schedule(batch=4, small_steps=3, small_black=0, small_fade=1, warmup=1, device="cuda", workers=2)
    model = train.train_backbone(str(tmp_path), "small", s)
    assert next(model.parameters()).is_cuda
    state = torch.load(str(tmp_path / "small.pt"), map_location="cpu", weights_only=True)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    cpu = train.train_backbone(str(tmp_path), "small", dataclasses.replace(s, small_steps=4, device="cpu", workers=0))
    assert not next(cpu.parameters()).is_cuda


def test_init_interpreters_keeps_a_saved_models_interpreters(tmp_path):
    """--init-interpreters: the interpreters phase resumes from the seeded checkpoint with nothing
    to train, and the model it hands on (to the fine-tune, the export) carries exactly the source
    model's interpreters; a model whose thresholds are not this script's 0.5 is refused."""
    from iared_edge import load_model, save_model
    from iared_edge.demo import DEMO_MODEL
    from iared_edge.demo.train import Schedule, seed_interpreters, train_interpreters_phase

    source = load_model(DEMO_MODEL).float()
    path = seed_interpreters(str(tmp_path), DEMO_MODEL)
    assert os.path.isfile(path)
    backbone = source.vit.state_dict()
    model = train_interpreters_phase(str(tmp_path), Schedule(interp_steps_per_stage=5), backbone)
    for (k, a), (k2, b) in zip(source.interpreters.state_dict().items(), model.interpreters.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert json.loads((tmp_path / "interpreters_history.json").read_text()) == []  # nothing was trained
    # later phases call this one again to get the model back: no reference evaluation is run or
    # logged for interpreters that were seeded, however often it is called
    train_interpreters_phase(str(tmp_path), Schedule(interp_steps_per_stage=5), backbone)
    log = tmp_path / "log.jsonl"
    assert not log.exists() or "training_free" not in log.read_text()
    source.thresholds = [0.5, 0.3, 0.5]
    save_model(source, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="threshold 0.5"):
        seed_interpreters(str(tmp_path / "fresh"), str(tmp_path / "other.safetensors"))


def _conv_flops_as_run(stem, x):
    """2 x multiply-adds of each convolution of `stem`, from the output shapes it really produces on x."""
    counted = []

    def hook(m, inp, out):
        counted.append(
            2.0
            * out.shape[2]
            * out.shape[3]
            * m.out_channels
            * m.in_channels
            * m.kernel_size[0]
            * m.kernel_size[1]
            / m.groups
        )

    handles = [c.register_forward_hook(hook) for c in stem.modules() if isinstance(c, torch.nn.Conv2d)]
    with torch.no_grad():
        stem(x)
    for h in handles:
        h.remove()
    return counted


def test_stem_blocks_grow_a_trained_backbone_without_changing_it(tmp_path):
    """`stem_blocks`: residual blocks added to the demo model's stem start as the identity, so a
    backbone trained without them loads (--init-backbone) and computes the same logits; the blocks'
    cost is counted (against a count from the convolutions' real output shapes); the config
    carries them through save_model / load_model; a backbone that does not fit is refused."""
    import timm

    from iared_edge import load_model, save_model
    from iared_edge.demo.train import demo_model, load_backbone_init, stem_blocks_of

    plain = timm.create_model("iared_digits_tiny", depth=2).eval()
    grown = timm.create_model("iared_digits_tiny", depth=2, stem_blocks=3).eval()
    load_backbone_init(grown, plain.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(grown(x), plain(x))
    assert stem_blocks_of(grown.state_dict()) == 3 and stem_blocks_of(plain.state_dict()) == 0
    # once the blocks have learnt something, the output differs
    with torch.no_grad():
        for block in grown.patch_embed.proj.blocks:
            block.body[-1].weight.fill_(0.5)
        assert not torch.allclose(grown(x), plain(x))

    stem = grown.patch_embed.proj
    counted = _conv_flops_as_run(stem, x[:1])
    assert len(counted) == 4 + 3 * 3
    assert stem.flops(224, 224) == pytest.approx(sum(counted))
    assert stem.flops(224, 224) > plain.patch_embed.proj.flops(224, 224)

    with pytest.raises(ValueError, match="stem blocks"):
        load_backbone_init(plain, grown.state_dict())
    with pytest.raises(ValueError, match="stem_blocks"):
        timm.create_model("iared_digits_tiny", stem_blocks=-1)

    full = timm.create_model("iared_digits_tiny", stem_blocks=2)
    model = demo_model(full.state_dict())
    assert model.timm_kwargs["stem_blocks"] == 2
    save_model(model, str(tmp_path / "m.safetensors"))
    again = load_model(str(tmp_path / "m.safetensors"))
    assert stem_blocks_of(again.vit.state_dict()) == 2
    img = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(again(img, policy="all").logits, model(img, policy="all").logits)
    assert again.flops().item() == pytest.approx(model.flops().item())


@pytest.mark.slow
def test_backbone_phase_keeps_a_moving_average_of_its_weights(tmp_path, monkeypatch):
    """--ema-decay: a backbone phase averages its weights step by step (checked against the
    recurrence run in float64 on the weights after each step), checkpoints the average, resumes
    it, and hands it on to the next phase; a checkpoint is not resumed with the other setting."""
    import dataclasses

    import timm
    from timm.utils import ModelEmaV3

    from iared_edge.demo import train
    from iared_edge.demo.train import Schedule, phase_weights, train_backbone

    monkeypatch.setattr(train, "MONITOR_IMAGES", 16)

    def as_float64(v):  # counters (BatchNorm's num_batches_tracked) stay integers: they are copied
        return v.detach().double() if v.is_floating_point() else v.detach().clone()

    seen = []
    update = ModelEmaV3.update

    def recording_update(self, model, step=None):
        seen.append({k: as_float64(v) for k, v in model.state_dict().items()})
        return update(self, model, step)

    monkeypatch.setattr(ModelEmaV3, "update", recording_update)

    def expected(start, decay):  # the average, from `start`, over the weights `seen` after each step
        ref = {k: as_float64(v) for k, v in start.items()}
        for w in seen:
            for k in ref:
                ref[k] = decay * ref[k] + (1 - decay) * w[k] if ref[k].is_floating_point() else w[k]
        return ref

    def close(state, ref):
        for k, v in state.items():
            assert (
                torch.allclose(as_float64(v), ref[k], atol=1e-6)
                and v.dtype.is_floating_point == ref[k].is_floating_point()
            ), k

    torch.manual_seed(0)
    init = timm.create_model("iared_digits_tiny", img_size=112).state_dict()
    s = Schedule(batch=4, small_steps=3, small_black=0, small_fade=1, warmup=1, lr=1e-3, ema_decay=0.6)
    out = str(tmp_path)
    returned = train_backbone(out, "small", s, init=init)
    state = torch.load(tmp_path / "small.pt", weights_only=True)
    assert len(seen) == 3 and state["step"] == 3
    close(state["ema"], expected(init, 0.6))
    assert phase_weights(state) is state["ema"]
    close(returned.state_dict(), {k: as_float64(v) for k, v in state["ema"].items()})
    assert not torch.allclose(state["ema"]["head.weight"], state["model"]["head.weight"])  # it lags

    # resumed for 2 more steps: the average goes on from the checkpointed one
    first, seen[:] = state["ema"], []
    train_backbone(out, "small", dataclasses.replace(s, small_steps=5))
    state = torch.load(tmp_path / "small.pt", weights_only=True)
    assert len(seen) == 2 and state["step"] == 5
    close(state["ema"], expected(first, 0.6))

    with pytest.raises(ValueError, match="ema-decay"):
        train_backbone(out, "small", dataclasses.replace(s, small_steps=6, ema_decay=0.0))
    plain = tmp_path / "plain"
    plain.mkdir()
    train_backbone(str(plain), "small", dataclasses.replace(s, small_steps=1, ema_decay=0.0), init=init)
    no_ema = torch.load(plain / "small.pt", weights_only=True)
    assert "ema" not in no_ema and phase_weights(no_ema) is no_ema["model"]
    with pytest.raises(ValueError, match="without --ema-decay"):
        train_backbone(str(plain), "small", dataclasses.replace(s, small_steps=2))
