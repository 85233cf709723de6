"""The demo task's generator, the heatmap methods and metrics, and the `make-digits` / `eval` CLI."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iared_edge import IARedViT, save_model
from iared_edge.cli import main as cli
from iared_edge.demo import DigitsInClutter, read_boxes, write_dataset
from iared_edge.demo.digits import SPLIT_COLUMNS, Composition
from iared_edge import explain


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
    assert all(len(np.unique(recolour(np.random.default_rng(k), photo, distractors=0.0).reshape(-1, 3), axis=0)) == 1
               for k in range(50))


@pytest.mark.parametrize("split", ["train", "test"])
def test_boxes_are_tight_around_the_ink(split):
    """On a black background (clutter 0) the ink is the only bright thing: every clearly bright
    pixel lies in the box, and each edge of the box touches ink."""
    gen = DigitsInClutter(split, seed=1)
    for i in range(40):
        img, _, (x0, y0, x1, y1) = gen.sample(i, clutter=0.0)
        v = img.max(2).astype(int)
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        ys, xs = np.nonzero(v > 0.2 * 255 + 5)          # alpha > 0.2 at full contrast, plus noise
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        ink = v > 0.2 * 0.7 * 175 - 5                     # the faintest ink the generator draws
        assert ink[y0:y1, x0].any() and ink[y0:y1, x1 - 1].any() and ink[y0, x0:x1].any() and ink[y1 - 1, x0:x1].any()
        assert (x1 - x0) * (y1 - y0) < 0.25 * 224 * 224   # most patches are background


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


def test_printed_text_changes_the_background_only():
    """--printed-text: the label and the box are those of the image without it (the text has its
    own random stream), the background changes where text was drawn, a share of 0 gives the
    default images exactly, and splits without augmentation (val, test) are not touched."""
    plain, texted = DigitsInClutter("train", seed=5), DigitsInClutter("train", seed=5, printed_text=1.0)
    zero = DigitsInClutter("train", seed=5, printed_text=0.0)
    changed = 0
    for i in range(12):
        a, la, ba = plain.sample(i)
        b, lb, bb = texted.sample(i)
        assert (la, ba) == (lb, bb)
        changed += int(np.abs(a.astype(int) - b.astype(int)).max() > 60)
        assert np.array_equal(zero.sample(i)[0], a)
    assert changed >= 10  # a label can fall behind the digit or off a dark-on-dark crop, rarely
    held = DigitsInClutter("test", seed=5, printed_text=1.0)
    assert all(np.array_equal(held.sample(i)[0], DigitsInClutter("test", seed=5).sample(i)[0]) for i in (0, 1))
    with pytest.raises(ValueError, match="printed_text"):
        DigitsInClutter("train", printed_text=1.5)


def test_printed_text_is_far_smaller_than_the_handwritten_digit():
    """Every printed character (a connected blob of ink on black) is at most `max_height` tall
    across its narrow side, with room for serifs and a blob or two touching: half the smallest
    handwritten digit (Composition.min_digit 44 px) at the default 22, so a label never reads as
    the digit to classify."""
    import cv2
    from iared_edge.demo.digits import add_printed_text
    sizes = []
    for seed in range(40):
        img = add_printed_text(np.random.default_rng(seed), np.zeros((224, 224, 3), np.uint8))
        ink = (img.max(2) > 60).astype(np.uint8)
        assert ink.any(), seed
        n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
        sizes += [min(w, h) for w, h in stats[1:, 2:4]]
    assert max(sizes) <= 1.5 * 22 and np.median(sizes) >= 3
    assert Composition().min_digit >= 2 * 22


@pytest.mark.parametrize("weights, match", [
    ({"board": 1, "building": 1, "smarties": 1}, "without a weight: \\['starry_night'\\]"),
    ({"board": 1, "building": 1, "smarties": 1, "starry_night": 1, "graf1": 1}, "not photos of this split: \\['graf1'\\]"),
    ({"board": 1, "building": -1, "smarties": 1, "starry_night": 1}, "bad: \\['building'\\]"),
    ({"board": 0, "building": 0, "smarties": 0, "starry_night": 0}, "not all 0"),
    ({"board": float("nan"), "building": 1, "smarties": 1, "starry_night": 1}, "bad: \\['board'\\]"),
])
def test_photo_weights_are_checked(weights, match):
    with pytest.raises(ValueError, match=match):
        DigitsInClutter("test", photo_weights=weights)


def test_photo_weights_file_reaches_every_phase_that_draws_training_images(tmp_path, monkeypatch):
    """--photo-weights and --printed-text: what the training generator gets (backbone phase,
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
        seen.append((split, kwargs.get("photo_weights"), kwargs.get("printed_text")))
        return real(split, *args, **kwargs)
    monkeypatch.setattr(train, "DigitsInClutter", recording)
    s = train.Schedule(batch=2, small_steps=1, small_black=0, small_fade=1, warmup=1, photo_weights=str(path),
                       printed_text=0.5)
    loader = train.interpreter_batches("train", 2, 0, **train.generator_kwargs(s))
    x, y = next(loader)
    loader.close()
    assert seen == [("train", w, 0.5)] and x.shape == (2, 3, 224, 224)
    monkeypatch.setattr(train, "MONITOR_IMAGES", 4)
    seen.clear()
    (tmp_path / "run").mkdir()
    train.train_backbone(str(tmp_path / "run"), "small", s, init=None)
    train_draws = [(wt, pt) for split, wt, pt in seen if split == "train"]
    assert train_draws and all(d == (w, 0.5) for d in train_draws)
    bad = tmp_path / "bad.json"
    bad.write_text('{"board": 1}')
    with pytest.raises(ValueError, match="bad.json"):
        train.read_photo_weights(str(bad))
    with pytest.raises(ValueError, match="missing.json"):
        train.read_photo_weights(str(tmp_path / "missing.json"))
    bad_s = train.Schedule(min_contrast=1.5)
    with pytest.raises(ValueError, match="--min-contrast"):
        train.generator_kwargs(bad_s)


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


def test_min_contrast_draws_fainter_training_ink_only_when_asked():
    """--min-contrast: the training generator's digits are drawn with ink contrast down to it
    (measured on a flat grey ground: the ink's distance from the grey, against the same image
    drawn at the default 0.7 floor); 0 leaves the default composition."""
    from iared_edge.demo import train
    assert "composition" not in train.generator_kwargs(train.Schedule())
    kw = train.generator_kwargs(train.Schedule(min_contrast=0.3))
    assert kw["composition"] == Composition(min_contrast=0.3)

    def ink_depth(composition):  # each image's deepest ink, as a distance from the grey ground
        gen = DigitsInClutter("train", seed=2, augment=False, composition=composition)
        gen.backgrounds = [np.full((300, 300, 3), 128, np.uint8)]
        gen.photo_p = None
        return np.array([np.abs(gen.sample(i)[0].astype(float) - 128).max() for i in range(60)])
    faint, default = ink_depth(kw["composition"]), ink_depth(Composition())
    # contrast uniform in [0.3, 1] against [0.7, 1]: means 0.65 and 0.85, a ratio of 0.76
    assert faint.mean() < 0.9 * default.mean() and faint.min() < default.min()


@pytest.mark.parametrize("fields, match", [
    (dict(size=8), "size must be an int >= 16"),
    (dict(size=224.0), "size must be an int"),
    (dict(min_digit=0), "min_digit"),
    (dict(min_digit=120, max_digit=100), "min_digit <= max_digit"),
    (dict(max_digit=300), "max_digit <= size"),
    (dict(max_rotation=-1), "max_rotation"),
    (dict(min_contrast=0), "min_contrast must be in \\(0, 1\\]"),
    (dict(min_contrast=1.2), "min_contrast"),
])
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
    px[41:47, 13:70] = 1.0      # pixel centres inside the box
    px[40, 13:70] = 0.5          # half-covered row
    ref = px.reshape(14, 16, 14, 16).mean((1, 3))
    assert np.allclose(ov.numpy(), ref)
    heat = torch.zeros(14, 14)
    heat[2, 1] = 1.0             # a patch the box crosses
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
    s = explain.evaluate_boxes(small_model, str(tmp_path), methods=("attention", "rollout"), curve_images=0,
                               batch=4, progress=False)
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
    assert cli(["eval", "--model", str(model_path), "--data", str(data), "--curve-images", "2",
                "--out", str(out), "--quiet"]) == 0
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
    assert cli(["eval", "--model", str(model_path), "--data", str(data), "--curve-images", "0",
                "--out", str(out0), "--quiet"]) == 0
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
    spec = importlib.util.spec_from_file_location("webcam_explain", os.path.join(
        os.path.dirname(__file__), "..", "samples", "webcam_explain.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(args)


def test_sample_runs_headless_on_the_bundled_clip(tmp_path, small_model, capsys):
    model_path = tmp_path / "m.safetensors"
    save_model(small_model, str(model_path))
    out = tmp_path / "annotated.mp4"
    assert _run_sample(["--source", "demo", "--model", str(model_path), "--headless", "--max-frames", "4",
                        "--output", str(out), "--budget-ms", "500"]) == 0
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
    assert _run_sample(["--source", "demo", "--model", str(model_path), "--headless", "--max-frames", "2",
                        "--output", str(out), "--precision", "bf16"]) == 0
    summary = json.loads((tmp_path / "bf16.json").read_text())
    assert summary["stats"]["precision"] == "bf16" and len(summary["frames"]) == 2
    with pytest.raises(SystemExit):  # argparse names the choices
        _run_sample(["--source", "demo", "--headless", "--precision", "int4"])


def test_sample_runs_int8_onnxruntime_graphs(tmp_path, small_model):
    model_path = tmp_path / "m.safetensors"
    save_model(small_model, str(model_path))
    out = tmp_path / "int8.mp4"
    assert _run_sample(["--source", "demo", "--model", str(model_path), "--headless", "--max-frames", "3",
                        "--output", str(out), "--backend", "onnxruntime", "--precision", "int8",
                        "--budget-ms", "500"]) == 0
    summary = json.loads((tmp_path / "int8.json").read_text())
    assert summary["stats"]["precision"] == "int8" and summary["stats"]["backend"] == "onnxruntime"
    assert len(summary["frames"]) == 3
    out = tmp_path / "thresholds.mp4"  # no budget: the thresholds' graph, each frame keeping its own tokens
    assert _run_sample(["--source", "demo", "--model", str(model_path), "--headless", "--max-frames", "3",
                        "--output", str(out), "--backend", "onnxruntime", "--precision", "int8"]) == 0
    assert len(json.loads((tmp_path / "thresholds.json").read_text())["frames"]) == 3


def test_sample_fits_a_wide_video_without_squashing_it(tmp_path, small_model):
    """--fit crop / letterbox on a 4:3 clip: the annotated video keeps the frame's shape."""
    model_path = tmp_path / "m.safetensors"
    save_model(small_model, str(model_path))
    clip = os.path.join(os.path.dirname(__file__), "data", "vtest_short.avi")  # 384 x 288
    for fit in ("crop", "letterbox"):
        out = tmp_path / f"{fit}.mp4"
        assert _run_sample(["--source", clip, "--model", str(model_path), "--headless", "--max-frames", "2",
                            "--output", str(out), "--fit", fit]) == 0
        ok, frame = cv2.VideoCapture(str(out)).read()
        assert ok and abs(frame.shape[1] / frame.shape[0] - 4 / 3) < 0.01  # (the encoder may trim a pixel)
        assert len(json.loads((tmp_path / f"{fit}.json").read_text())["frames"]) == 2
    with pytest.raises(SystemExit):
        _run_sample(["--source", "demo", "--headless", "--fit", "stretch"])


def test_sample_bad_arguments_are_one_line_errors(tmp_path, capsys):
    """No traceback for a user's mistake: one line naming it, exit status 2."""
    cases = [(["--source", str(tmp_path / "missing.mp4")], "no such video file"),
             (["--budget-ms", "-3"], "budget_ms must be a positive number"),
             (["--model", "deit_tiny_patch16"], "unknown model 'deit_tiny_patch16'"),
             (["--output", str(tmp_path / "nowhere" / "x.mp4")], "no such folder"),
             (["--precision", "int8"], 'give backend="onnxruntime"')]  # int8 graphs are ONNX Runtime's
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
    with Runtime(model, policy="ratio", ratio=0.5, color="rgb") as rt32, \
            Runtime(model, policy="ratio", ratio=0.5, color="rgb", backend="onnxruntime", precision="int8",
                    onnx_cache=str(tmp_path)) as rt8:
        a, b = rt32.batch(frames), rt8.batch(frames)
        assert rt8.stats()["precision"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep_counts.int8.onnx"]
    top32 = np.array([r.indices[0] for r in a])
    top8 = np.array([r.indices[0] for r in b])
    assert (top8 == top32).mean() >= 0.97
    assert (top8 == labels).mean() >= SHIPPED_MODEL_MIN_ACCURACY
    assert [r.stage_keep for r in a] == [r.stage_keep for r in b]  # policy "ratio": the same counts


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
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
        counted.append(2.0 * out.shape[2] * out.shape[3] * m.out_channels * m.in_channels
                       * m.kernel_size[0] * m.kernel_size[1] / m.groups)
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


def test_stem_fine_blocks_grow_a_trained_backbone_without_changing_it(tmp_path):
    """`stem_fine_blocks`: residual blocks at 1/4 resolution (after the second conv) start as the
    identity too, next to the 1/8-resolution ones; their cost is counted against the convolutions'
    real output shapes; save_model / load_model carry both counts."""
    import timm
    from iared_edge import load_model, save_model
    from iared_edge.demo.train import STEM_FINE_BLOCKS, demo_model, load_backbone_init, stem_blocks_of, stem_kwargs
    coarse = timm.create_model("iared_digits_tiny", depth=2, stem_blocks=1).eval()
    grown = timm.create_model("iared_digits_tiny", depth=2, stem_blocks=1, stem_fine_blocks=2).eval()
    load_backbone_init(grown, coarse.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(grown(x), coarse(x))
    assert stem_kwargs(grown.state_dict()) == {"stem_blocks": 1, "stem_fine_blocks": 2}
    assert stem_blocks_of(grown.state_dict(), STEM_FINE_BLOCKS) == 2 and stem_kwargs(coarse.state_dict()) == {"stem_blocks": 1}
    stem = grown.patch_embed.proj
    seen = {}
    for i, block in enumerate(stem.fine_blocks):  # they run at 1/4 resolution on 48 channels
        block.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, tuple(out.shape)))
    with torch.no_grad():
        for block in stem.fine_blocks:  # once they have learnt something, the output differs
            block.body[-1].weight.fill_(0.5)
        out = grown(x[:1])
    counted = _conv_flops_as_run(stem, x[:1])
    assert seen == {0: (1, 48, 56, 56), 1: (1, 48, 56, 56)}
    assert not torch.allclose(out, coarse(x[:1]))
    assert len(counted) == 4 + 3 * 1 + 3 * 2
    assert stem.flops(224, 224) == pytest.approx(sum(counted))

    with pytest.raises(ValueError, match="stem blocks"):
        load_backbone_init(coarse, grown.state_dict())
    with pytest.raises(ValueError, match="stem_fine_blocks"):
        timm.create_model("iared_digits_tiny", stem_fine_blocks=-1)

    model = demo_model(timm.create_model("iared_digits_tiny", stem_fine_blocks=3).state_dict())
    assert model.timm_kwargs == {"num_classes": 10, "stem_fine_blocks": 3}
    save_model(model, str(tmp_path / "m.safetensors"))
    again = load_model(str(tmp_path / "m.safetensors"))
    assert stem_kwargs(again.vit.state_dict()) == {"stem_fine_blocks": 3}
    img = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(again(img, policy="all").logits, model(img, policy="all").logits)


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
            assert torch.allclose(as_float64(v), ref[k], atol=1e-6) and v.dtype.is_floating_point == ref[k].is_floating_point(), k

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


def test_distillation_loss_against_float64_formula():
    """(1 - w) CE + w T^2 KL(teacher || student / T), checked in float64 by hand; no teacher (or
    w = 0) is the plain cross-entropy."""
    from iared_edge.demo.train import Schedule, distillation_loss
    torch.manual_seed(0)
    logits, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    teacher_p = torch.randn(5, 10).softmax(-1)
    s = Schedule(distill_weight=0.3, distill_temperature=2.5, label_smoothing=0.1)
    z, p = logits.double(), teacher_p.double()
    q = (1 - 0.1) * F.one_hot(y, 10).double() + 0.1 / 10
    ce = -(q * z.log_softmax(-1)).sum(-1).mean()
    kl = (p * (p.log() - (z / 2.5).log_softmax(-1))).sum(-1).mean()
    ref = 0.7 * ce + 0.3 * 2.5 ** 2 * kl
    assert float(distillation_loss(logits, y, teacher_p, s)) == pytest.approx(float(ref), rel=1e-5)
    assert float(distillation_loss(logits, y, None, s)) == pytest.approx(float(ce), rel=1e-5)
    s0 = Schedule(distill_weight=0.0, label_smoothing=0.1)
    assert float(distillation_loss(logits, y, teacher_p, s0)) == pytest.approx(float(ce), rel=1e-5)


def test_teacher_probabilities_follow_each_teachers_input(tmp_path):
    """The teachers' mean softmax; a teacher gets the image in its own normalisation and size
    (checked against its plain forward on the image prepared by hand), and one whose labels are
    not the demo's is refused by name."""
    import timm
    from iared_edge.demo.train import load_teachers, teacher_probabilities, to_input
    torch.manual_seed(0)
    a = IARedViT.from_timm("iared_digits_tiny", depth=2, groups=(1, 1), labels=[str(d) for d in range(10)]).eval()
    b = IARedViT.from_timm("iared_digits_tiny", depth=2, groups=(1, 1), labels=[str(d) for d in range(10)],
                           img_size=112).eval()
    b.vit.pretrained_cfg = {**b.vit.pretrained_cfg, "mean": (0.4, 0.45, 0.5), "std": (0.2, 0.25, 0.3)}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_model(a, str(pa)), save_model(b, str(pb))
    loaded = load_teachers(f"{pa}, {pb}")
    assert len(loaded) == 2 and loaded[1].input_size == (3, 112, 112)
    imgs = DigitsInClutter("val").batch(range(3))[0]
    x = to_input(imgs)
    got = teacher_probabilities([a, b], x, 2.0)
    with torch.no_grad():
        ref_a = (a(x, policy="all").logits / 2.0).softmax(-1)
        pix = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        small = F.interpolate(pix, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        tb = (small - torch.tensor((0.4, 0.45, 0.5)).view(1, 3, 1, 1)) / torch.tensor((0.2, 0.25, 0.3)).view(1, 3, 1, 1)
        ref_b = (b(tb, policy="all").logits / 2.0).softmax(-1)
    assert torch.allclose(got, (ref_a + ref_b) / 2, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(3))
    five = IARedViT.from_timm("iared_digits_tiny", depth=1, groups=(1,), num_classes=5).eval()
    save_model(five, str(tmp_path / "five.safetensors"))
    with pytest.raises(ValueError, match="five.safetensors: its labels"):
        load_teachers(str(tmp_path / "five.safetensors"))
    with pytest.raises(ValueError, match="no model named"):
        load_teachers(" , ")


def test_backbone_phase_distils_from_its_teacher(tmp_path, monkeypatch):
    """--teacher: each backbone step asks the teacher for soft targets on that step's images and
    trains on the distillation loss; bad weights or temperatures are refused by name."""
    import dataclasses
    from iared_edge.demo import train
    monkeypatch.setattr(train, "MONITOR_IMAGES", 4)
    torch.manual_seed(0)
    t = IARedViT.from_timm("iared_digits_tiny", depth=1, groups=(1,), labels=[str(d) for d in range(10)],
                           img_size=112).eval()
    path = tmp_path / "t.safetensors"
    save_model(t, str(path))
    calls, losses = [], []
    real_tp, real_loss = train.teacher_probabilities, train.distillation_loss
    monkeypatch.setattr(train, "teacher_probabilities", lambda ts, x, T, amp=None: calls.append(x.shape) or real_tp(ts, x, T, amp))
    monkeypatch.setattr(train, "distillation_loss", lambda lg, y, p, s: losses.append(p) or real_loss(lg, y, p, s))
    s = train.Schedule(batch=2, small_steps=2, small_black=0, small_fade=1, warmup=1, teacher=str(path), amp="none")
    (tmp_path / "run").mkdir()
    train.train_backbone(str(tmp_path / "run"), "small", s)
    assert calls == [(2, 3, 112, 112)] * 2 and len(losses) == 2 and all(p.shape == (2, 10) for p in losses)
    for bad in (dict(distill_weight=1.5), dict(distill_temperature=0.0)):
        (tmp_path / str(bad)).mkdir()
        with pytest.raises(ValueError, match="distill"):
            train.train_backbone(str(tmp_path / str(bad)), "small", dataclasses.replace(s, **bad))


def test_width_trains_a_wider_backbone_that_exports_and_teaches(tmp_path, monkeypatch):
    """--width: the backbone phase builds iared_digits_tiny at that width (64 per head); the
    demo model rebuilt from its weights has that width, survives save / load unchanged, and is
    accepted as a --teacher; a width that is not a multiple of 64, or an --init-backbone of
    another width, is refused by name."""
    import dataclasses
    from iared_edge import load_model
    from iared_edge.demo import train
    monkeypatch.setattr(train, "MONITOR_IMAGES", 4)
    s = train.Schedule(batch=2, small_steps=1, small_black=0, small_fade=1, warmup=1, width=128, amp="none")
    (tmp_path / "run").mkdir()
    train.train_backbone(str(tmp_path / "run"), "small", s)
    state = train.phase_weights(torch.load(tmp_path / "run" / "small.pt", weights_only=True))
    assert state["cls_token"].shape[-1] == 128
    model = train.demo_model(train.resize_pos_embed(state, 14))
    assert model.vit.embed_dim == 128 and model.vit.blocks[0].attn.num_heads == 2
    path = tmp_path / "wide.safetensors"
    save_model(model, str(path))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(load_model(str(path))(x, policy="all").logits, model(x, policy="all").logits, atol=1e-5)
    assert train.load_teachers(str(path))[0].vit.embed_dim == 128
    with pytest.raises(ValueError, match="--width must be"):
        train.width_kwargs(100)
    (tmp_path / "narrow").mkdir()
    with pytest.raises(ValueError, match="token width 128"):
        train.train_backbone(str(tmp_path / "narrow"), "small", dataclasses.replace(s, width=0), init=state)


def test_hard_replay_brings_back_the_worst_images_until_their_uses_run_out():
    """HardReplay against a plain loop: after each step the `size` highest-loss images (fresh or
    replayed) come back behind the next fresh images; an image comes back at most max_uses times;
    its state round-trips (resume)."""
    from iared_edge.demo.train import HardReplay
    rep = HardReplay(2, max_uses=2)
    x0, y0 = torch.arange(4.0).view(4, 1), torch.tensor([0, 1, 2, 3])
    x, y, uses = rep.compose(x0, y0)
    assert torch.equal(x, x0) and uses.tolist() == [0, 0, 0, 0]
    rep.update(x, y, torch.tensor([0.1, 3.0, 0.2, 2.0]), uses)  # images 1 and 3 are the worst
    x, y, uses = rep.compose(x0 + 10, y0)
    assert x.flatten().tolist() == [10, 11, 12, 13, 1, 3] and y.tolist() == [0, 1, 2, 3, 1, 3]
    assert uses.tolist() == [0, 0, 0, 0, 1, 1]
    rep.update(x, y, torch.tensor([0.0, 0.0, 0.0, 0.5, 5.0, 0.1]), uses)  # 1 still worst, then 13
    x, y, uses = rep.compose(x0 + 20, y0)
    assert x.flatten().tolist()[4:] == [1, 13] and uses.tolist()[4:] == [2, 1]
    restored = HardReplay(2, max_uses=2)
    restored.load_state_dict(rep.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.compose(x0, y0), rep.compose(x0, y0)))
    rep.update(x, y, torch.tensor([0.0, 0.0, 0.0, 0.0, 9.0, 0.2]), uses)  # 1 has come back twice: retired
    x, _, uses = rep.compose(x0 + 30, y0)
    assert x.flatten().tolist()[4:] == [13, 20] and uses.tolist()[4:] == [2, 1]  # ties: the first
    empty = HardReplay(3, max_uses=1)
    empty.update(x[:2], y0[:2], torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))  # all used up
    assert empty.state_dict() == {} and torch.equal(empty.compose(x0, y0)[0], x0)
    with pytest.raises(ValueError, match="--replay-uses"):
        HardReplay(2, 0)


def test_full_phase_with_hard_replay_trains_on_fresh_plus_replayed_and_resumes(tmp_path, monkeypatch):
    """--hard-replay K: the full phase draws batch - K fresh images a step and trains on them plus
    the K worst of the step before (the first step: the fresh ones only); the checkpoint keeps the
    replay so a resumed run continues it; the small phase ignores it; K >= batch is refused."""
    import dataclasses
    from iared_edge.demo import train
    monkeypatch.setattr(train, "MONITOR_IMAGES", 4)
    trained = []
    real_loss = train.distillation_loss
    monkeypatch.setattr(train, "distillation_loss", lambda lg, y, p, s: trained.append(lg.shape[0]) or real_loss(lg, y, p, s))
    s = train.Schedule(batch=3, small_steps=1, full_steps=2, small_black=0, small_fade=1, warmup=1,
                       amp="none", hard_replay=1)
    (tmp_path / "small").mkdir()
    train.train_backbone(str(tmp_path / "small"), "small", s)
    assert trained == [3]
    (tmp_path / "full").mkdir()
    train.train_backbone(str(tmp_path / "full"), "full", s)
    assert trained == [3, 2, 3]
    state = torch.load(tmp_path / "full" / "full.pt", weights_only=True)
    assert state["replay"]["x"].shape == (1, 3, 224, 224) and state["replay"]["uses"].tolist()[0] in (0, 1)
    train.train_backbone(str(tmp_path / "full"), "full", dataclasses.replace(s, full_steps=3))  # resumed
    assert trained == [3, 2, 3, 3]
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="--hard-replay"):
        train.train_backbone(str(tmp_path / "bad"), "full", dataclasses.replace(s, hard_replay=3))


def _load_benchmark(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(
        os.path.dirname(__file__), "..", "benchmarks", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seen_scenes_diagnosis_adds_held_out_photos_at_their_share(monkeypatch):
    """benchmarks/demo_seen_scenes.py (runs/demo30): the named held-out photos join the train split
    only, get `share` of the draws, and the training photos keep their relative weights."""
    from iared_edge.demo import digits
    seen = _load_benchmark("demo_seen_scenes")
    train_photos = digits._background_names("train")
    base = {p: float(i + 1) for i, p in enumerate(train_photos)}
    w = seen.mixed_weights(train_photos, ["board", "smarties"], 0.4, base)
    assert abs(sum(w.values()) - 1.0) < 1e-12
    assert w["board"] == w["smarties"] == pytest.approx(0.2)
    a, b = train_photos[0], train_photos[-1]
    assert w[b] / w[a] == pytest.approx(base[b] / base[a])
    with pytest.raises(ValueError, match="share"):
        seen.mixed_weights(train_photos, ["board"], 1.0)
    with pytest.raises(ValueError, match="no weight for training photos"):
        seen.mixed_weights(train_photos, ["board"], 0.5, {a: 1.0})

    monkeypatch.setattr(digits, "_background_names", seen.train_names_with(["board", "smarties"]))
    assert digits._background_names("test") == list(digits.TEST_BACKGROUNDS)  # test untouched
    gen = digits.DigitsInClutter("train", photo_weights=w)
    assert set(gen.background_names) == set(train_photos) | {"board", "smarties"}
    drawn = [gen.background_of(i) for i in range(3000)]
    added = sum(p in ("board", "smarties") for p in drawn) / len(drawn)
    assert abs(added - 0.4) < 4 * (0.4 * 0.6 / len(drawn)) ** 0.5  # binomial, 4 sigma


@pytest.mark.parametrize("argv, match", [
    (["--", "--out", "x"], "--photos"),
    (["--photos", "board"], "usage"),
    (["--photos", "graf1", "--", "--out", "x"], "held-out photos"),
    (["--photos", "board", "--", "--out", "x", "--photo-weights", "w.json"], "--base-weights"),
    (["--photos", "board", "--", "--out", "x", "--workers", "2"], "one process"),
    (["--photos", "board", "--", "--phase", "full"], "--out"),
])
def test_seen_scenes_diagnosis_refuses_bad_arguments(argv, match, capsys):
    seen = _load_benchmark("demo_seen_scenes")
    with pytest.raises(SystemExit) as e:
        seen.main(argv)
    assert match in str(e.value) + capsys.readouterr().err


@pytest.mark.parametrize("split", ["train", "test"])
def test_ink_coverage_is_the_ink_the_image_shows(split):
    """`with_ink`: on a black background the brightness of every pixel is its ink coverage times the
    ink's contrast (0.7-1) and colour (175-255), give or take the sensor noise; the box is where
    the coverage passes 0.2; asking for the coverage changes no image. `batch(ink_grid=g)`: each
    cell's value is the mean coverage of its pixels (a block mean), and the same images."""
    gen = DigitsInClutter(split, seed=2)
    for i in range(20):
        img, label, box, cov = gen.sample(i, clutter=0.0, with_ink=True)
        plain = gen.sample(i, clutter=0.0)
        assert np.array_equal(img, plain[0]) and label == plain[1] and box == plain[2]
        assert cov.shape == (224, 224) and cov.dtype == np.float32 and 0 <= cov.min() and cov.max() <= 1
        v = img.max(2).astype(float)
        assert (v <= cov * 255 + 5).all() and (v >= cov * 0.7 * 175 - 5).all()
        ys, xs = np.nonzero(cov > 0.2)
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    imgs, labels, boxes, grid = gen.batch(range(6), size=112, ink_grid=28)
    ref_imgs, ref_labels, ref_boxes = gen.batch(range(6), size=112)
    assert np.array_equal(imgs, ref_imgs) and np.array_equal(labels, ref_labels) and np.array_equal(boxes, ref_boxes)
    for i in range(6):
        cov = gen.sample(i, with_ink=True)[3].astype(np.float64)
        blocks = cov.reshape(28, 8, 28, 8).mean(axis=(1, 3))
        assert grid.shape == (6, 28, 28) and np.allclose(grid[i], blocks, atol=1e-5)


def test_ink_head_loss_against_float64_reference():
    """InkHead: binary cross-entropy of a 1x1 read-out of the stem's 1/8-resolution features (the
    input of its last convolution, after the stem blocks), computed in float64 by running the
    stem's layers one by one; the hook lives only inside `reading()`; the read-out starts at the
    ink prior everywhere; a target grid that is not the features' is refused by name."""
    import math
    import timm
    from iared_edge.demo.train import INK_PRIOR, InkHead
    torch.manual_seed(0)
    vit = timm.create_model("iared_digits_tiny", stem_blocks=1).train()
    head = InkHead(vit)
    stem = vit.patch_embed.proj
    assert sum(p.numel() for p in head.parameters()) == 97          # 96 weights and a bias: not the stem's
    assert torch.allclose(head.conv.bias, torch.tensor([math.log(INK_PRIOR / (1 - INK_PRIOR))]))
    with torch.no_grad():
        head.conv.weight.normal_(0, 0.3)
        stem.blocks[0].body[-1].weight.normal_()   # a stem block that is not the identity: read after it
    x = torch.randn(2, 3, 224, 224)
    target = torch.rand(2, 28, 28)
    with head.reading():
        vit(x)
    assert all(not m._forward_pre_hooks for m in vit.modules())
    loss = head.loss(target)

    ref = vit.double().eval()  # BatchNorm: the batch statistics training used, recomputed in float64
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    h = x.double()
    with torch.no_grad():
        for layer in list(stem.children())[:stem._layers - 1]:
            h = layer(h)
        h = stem.blocks(h)
        z = (h * head.conv.weight.double().view(1, -1, 1, 1)).sum(1) + head.conv.bias.double()
        t = target.double()
        expected = -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z))).mean()
    assert abs(loss.item() - expected.item()) < 1e-4
    with pytest.raises(ValueError, match="ink targets of grid"):
        head.loss(target)                                          # nothing kept since
    vit.float()
    with head.reading():
        vit(x)
    with pytest.raises(ValueError, match=r"grid \(14, 14\)"):
        head.loss(torch.rand(2, 14, 14))
    with pytest.raises(ValueError, match="convolutional stem"):
        InkHead(timm.create_model("vit_tiny_patch16_224", num_classes=10))   # timm's linear patch embedding


def test_full_phase_with_ink_weight_trains_the_read_out_and_resumes(tmp_path, monkeypatch):
    """--ink-weight: the full phase adds the ink loss (logged apart from the classification loss),
    trains the read-out (checkpointed, resumed), and refuses to resume without it, or with it a
    checkpoint trained without; the small phase ignores it; bad values and --hard-replay are refused."""
    import dataclasses
    from iared_edge.demo import train
    monkeypatch.setattr(train, "MONITOR_IMAGES", 4)
    seen = []
    real = train.InkHead.loss
    monkeypatch.setattr(train.InkHead, "loss", lambda self, ink: seen.append(tuple(ink.shape)) or real(self, ink))
    s = train.Schedule(batch=2, small_steps=1, full_steps=2, small_black=0, small_fade=1, warmup=1,
                       amp="none", stem_blocks=1, ink_weight=0.5)
    (tmp_path / "small").mkdir()
    train.train_backbone(str(tmp_path / "small"), "small", s)
    assert seen == [] and "ink_head" not in torch.load(tmp_path / "small" / "small.pt", weights_only=True)
    out = tmp_path / "full"
    out.mkdir()
    train.train_backbone(str(out), "full", s)
    assert seen == [(2, 28, 28)] * 2
    state = torch.load(out / "full.pt", weights_only=True)
    assert state["ink_head"]["conv.weight"].abs().sum() > 0            # moved from its zero start
    groups = state["optimizer"]["param_groups"]                         # the read-out at INK_HEAD_LR x
    assert groups[-1]["lr"] == pytest.approx(train.INK_HEAD_LR * groups[0]["lr"]) and groups[0]["lr"] > 0
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert log[-1]["step"] == 2 and "ink_loss" in log[-1] and "loss" in log[-1]
    train.train_backbone(str(out), "full", dataclasses.replace(s, full_steps=3))   # resumed
    assert len(seen) == 3 and torch.load(out / "full.pt", weights_only=True)["step"] == 3
    with pytest.raises(ValueError, match="with --ink-weight"):
        train.train_backbone(str(out), "full", dataclasses.replace(s, full_steps=4, ink_weight=0.0))
    plain = tmp_path / "plain"                                          # a checkpoint trained without
    plain.mkdir()
    train.train_backbone(str(plain), "full", dataclasses.replace(s, full_steps=1, ink_weight=0.0))
    with pytest.raises(ValueError, match="without --ink-weight"):
        train.train_backbone(str(plain), "full", dataclasses.replace(s, full_steps=2))
    for bad, match in [(dict(ink_weight=-1.0), "--ink-weight"), (dict(hard_replay=1), "--hard-replay")]:
        (tmp_path / "bad").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match=match):
            train.train_backbone(str(tmp_path / "bad"), "full", dataclasses.replace(s, **bad))


def test_crop_reader_crops_the_ink_box_centred_with_its_margin():
    """benchmarks/demo_crop_reader.py: the crop is the square of `margin` times the box's longer
    side around the box's centre (checked on a white box drawn on black), edge-padded off the image."""
    cr = _load_benchmark("demo_crop_reader")
    img = np.zeros((224, 224, 3), np.uint8)
    img[60:140, 50:90] = 255                      # box (50, 60, 90, 140): 40 wide, 80 tall
    c = cr.crop_box(img, (50, 60, 90, 140), 48)  # a 100 px square around (70, 100), 0.48 px per px
    assert c.shape == (48, 48, 3) and c.dtype == np.uint8
    ys, xs = np.nonzero(c[..., 0] > 127)
    assert abs(ys.mean() - 23.5) < 1 and abs(xs.mean() - 23.5) < 1   # centred
    assert abs((ys.max() - ys.min() + 1) - 80 * 0.48) <= 1.5          # the box, scaled by 48 / 100
    assert abs((xs.max() - xs.min() + 1) - 40 * 0.48) <= 1.5
    corner = np.zeros((224, 224, 3), np.uint8)
    corner[:40, :40] = 255                        # a box at the corner: the square leaves the image
    c = cr.crop_box(corner, (0, 0, 40, 40), 48)   # 50 px around (20, 20): 5 px off on two sides
    assert c.shape == (48, 48, 3)
    assert (c[:20, :20] == 255).all()             # replicated edge, not black
    assert (c[-3:, -3:] == 0).all()


def test_box_tokens_are_the_patches_over_the_grown_box():
    """benchmarks/demo_box_tokens.py: the kept patches are exactly those a naive loop finds
    overlapping the box grown by `dilate` patches, clipped to the grid."""
    bt = _load_benchmark("demo_box_tokens")
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(40):
        x0, y0 = (int(v) for v in rng.integers(0, 200, 2))
        boxes.append((x0, y0, min(224, x0 + int(rng.integers(1, 120))), min(224, y0 + int(rng.integers(1, 120)))))
    boxes.append((0, 0, 224, 224))
    boxes.append((16, 16, 32, 32))                    # exactly one patch
    for d in (0, 1, 2):
        got = bt.box_tokens(boxes, d)
        assert got.shape == (len(boxes), 196) and got.dtype == torch.bool
        for b, (x0, y0, x1, y1) in enumerate(boxes):
            want = torch.zeros(14, 14, dtype=torch.bool)
            for r in range(14):
                for c in range(14):
                    # patch (r, c) covers pixels [16c, 16c + 16) x [16r, 16r + 16); grown box:
                    gx0, gy0, gx1, gy1 = x0 - 16 * d, y0 - 16 * d, x1 + 16 * d, y1 + 16 * d
                    want[r, c] = bool(16 * c < gx1 and gx0 < 16 * c + 16 and 16 * r < gy1 and gy0 < 16 * r + 16)
            assert torch.equal(got[b], want.flatten()), (boxes[b], d)
    assert bt.box_tokens([(16, 16, 32, 32)], 0).sum() == 1
    with pytest.raises(ValueError, match="dilate"):
        bt.box_tokens(boxes, -1)
    with pytest.raises(ValueError, match="boxes"):
        bt.box_tokens([(1, 2, 3)], 0)
