"""IARedViT against independent references: timm's own forward, naive float64 loops, and the
other execution."""

import math

import numpy as np
import pytest
import timm
import torch

from iared_edge import IARedViT
from iared_edge.interpreter import Interpreter


@pytest.mark.parametrize(
    "name",
    ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "deit_tiny_distilled_patch16_224"],
)
def test_policy_all_packed_equals_timm(name):
    torch.manual_seed(0)
    model = IARedViT.from_timm(name).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = model(x, policy="all").logits
        ref = model.vit(x)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_other_input_size_and_groups():
    torch.manual_seed(0)
    model = IARedViT.from_timm("vit_tiny_patch16_224", img_size=160, groups=(2, 4, 6), num_classes=7).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert (model(x, policy="all").logits - model.vit(x)).abs().max() <= 1e-5
        out = model(x, policy="level", level=0.5)
    assert out.keep_masks.shape == (2, 3, 100) and out.heatmap.shape == (2, 10, 10)


@pytest.mark.parametrize(
    "policy,kwargs",
    [
        ("all", {}),
        ("threshold", {}),
        ("threshold", {"thresholds": (0.45, 0.5, 0.55)}),
        ("level", {"level": 0.5}),
        ("level", {"level": (0.9, 0.6, 0.3)}),
    ],
)
def test_packed_equals_masked(tiny, images, policy, kwargs):
    with torch.no_grad():
        p = tiny(images, policy=policy, execution="packed", **kwargs)
        m = tiny(images, policy=policy, execution="masked", **kwargs)
    assert torch.equal(p.keep_masks, m.keep_masks)
    rel = (p.logits - m.logits).norm() / m.logits.norm()
    assert rel <= 1e-4
    assert torch.allclose(p.scores, m.scores, atol=1e-5)


def test_sampled_decisions_replay_in_packed(tiny, images):
    torch.manual_seed(3)
    with torch.no_grad():
        m = tiny(images, policy="sample", execution="masked")
        decisions = [m.keep_masks[:, s] for s in range(tiny.num_stages)]
        p = tiny(images, policy="given", decisions=decisions, execution="packed")
    assert torch.equal(p.keep_masks, m.keep_masks)
    assert (p.logits - m.logits).norm() / m.logits.norm() <= 1e-4
    # log-probability of the sample, recomputed naively from the recorded scores
    alive = torch.ones(images.shape[0], tiny.num_patches, dtype=torch.bool)
    for s in range(tiny.num_stages):
        keep, prob = m.keep_masks[:, s], m.scores[:, s].double()
        lp = torch.where(keep, prob.log(), (1 - prob).log())
        assert torch.allclose(m.log_probs[:, s].double(), (lp * alive).sum(1), rtol=1e-4)
        alive = keep


def test_sample_gradients_reach_interpreters_only_through_log_probs(tiny, images):
    model = IARedViT.from_timm("deit_tiny_patch16_224")
    out = model(images[:2], policy="sample", execution="masked")
    out.log_probs.sum().backward()
    for interp in model.interpreters:
        assert interp.qk.weight.grad is not None and interp.qk.weight.grad.abs().sum() > 0


def test_packed_execution_is_inference_only_even_with_grad_enabled(tiny, images):
    # a gradient through the compiled ops would be partial (they have no backward): packed
    # outputs must not require grad, so a backward fails at once instead of training wrongly
    assert torch.is_grad_enabled()
    out = tiny(images[:2], policy="threshold")
    assert not out.logits.requires_grad and not out.scores.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        out.logits.sum().backward()
    assert tiny(images[:2], policy="threshold", execution="masked").logits.requires_grad


def test_packed_batch_equals_each_image_alone(tiny, images):
    with torch.no_grad():
        batch = tiny(images, policy="threshold")
        assert len(set(map(tuple, batch.kept_counts.tolist()))) > 1, "want different keep counts"
        for i in range(images.shape[0]):
            alone = tiny(images[i : i + 1], policy="threshold")
            assert torch.equal(alone.keep_masks[0], batch.keep_masks[i])
            assert torch.allclose(alone.logits[0], batch.logits[i], atol=1e-5, rtol=1e-5)


def test_ratio_gives_exact_counts(tiny, images):
    level = (0.7, 0.55, 0.3)
    with torch.no_grad():
        out = tiny(images, policy="level", level=level)
    n, expected = tiny.num_patches, []
    for r in level:
        n = math.ceil(round(r * n, 9))
        expected.append(n)
    assert out.kept_counts.tolist() == [expected] * images.shape[0]


def test_ratio_zero_keeps_only_class_token(tiny, images):
    with torch.no_grad():
        p = tiny(images, policy="level", level=0.0)
        m = tiny(images, policy="level", level=0.0, execution="masked")
    assert p.kept_counts.sum() == 0 and torch.isfinite(p.logits).all()
    assert torch.allclose(p.logits, m.logits, atol=1e-5)


def _naive_head_logits(interp: Interpreter, x: torch.Tensor) -> torch.Tensor:
    """Float64 loop over images and heads: the paper's per-head class-token query . key x head_dim^-0.5."""
    x = x.double()
    w, b = interp.qk.weight.double(), interp.qk.bias.double()
    C, H, D = x.shape[-1], interp.num_heads, interp.head_dim
    out = torch.zeros(x.shape[0], H, x.shape[1], dtype=torch.float64)
    for i in range(x.shape[0]):
        xn = torch.nn.functional.layer_norm(x[i], (C,), eps=interp.norm.eps)
        qk = xn @ w.t() + b
        q, k = qk[0, :C], qk[:, C:]
        for h in range(H):
            sl = slice(h * D, (h + 1) * D)
            out[i, h] = (k[:, sl] @ q[sl]) * D**-0.5
    return out


def _naive_scores(interp: Interpreter, x: torch.Tensor) -> torch.Tensor:
    """The keep probability: mean over heads of the sigmoid."""
    return torch.sigmoid(_naive_head_logits(interp, x)).mean(1)


def test_head_logits_match_the_definition(tiny):
    torch.manual_seed(6)
    interp = tiny.interpreters[2]
    x = torch.randn(3, 197, tiny.vit.embed_dim)
    with torch.no_grad():
        logits = interp.head_logits(x)
        probs = interp(x)
    assert logits.shape == (3, interp.num_heads, 197)
    assert torch.allclose(logits.double(), _naive_head_logits(interp, x), atol=1e-4)
    assert torch.allclose(probs.double(), _naive_scores(interp, x), atol=1e-5)


def test_threshold_drops_exactly_tokens_under_threshold(tiny, images):
    with torch.no_grad():
        out = tiny(images, policy="threshold")
        first = _naive_scores(tiny.interpreters[0], tiny._embed(images))[:, tiny.num_prefix :]
    assert torch.allclose(out.scores[:, 0].double(), first, atol=1e-5)
    alive = torch.ones_like(out.keep_masks[:, 0])
    for s, t in enumerate(tiny.thresholds):
        assert torch.equal(out.keep_masks[:, s], alive & (out.scores[:, s] > t))
        assert not (out.keep_masks[:, s] & ~alive).any(), "a dropped token came back"
        assert (out.scores[:, s][~alive] == 0).all()
        alive = out.keep_masks[:, s]
    assert torch.equal(out.kept_counts, out.keep_masks.sum(-1))


def test_folded_scores_equal_unfolded(tiny):
    torch.manual_seed(5)
    interp = tiny.interpreters[1]
    x = torch.randn(4, 197, tiny.vit.embed_dim)
    vecs, biases = interp.fold(x[:, 0])
    xn = interp.norm(x)
    folded = torch.sigmoid(torch.einsum("blc,bhc->bhl", xn, vecs) + biases[..., None]).mean(1)
    assert torch.allclose(folded.double(), _naive_scores(interp, x), atol=1e-5)
    assert torch.allclose(interp(x).double(), _naive_scores(interp, x), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_forward_runs_under_autocast_and_scores_in_float32(tiny, images, dtype):
    """Under a caller's autocast the folded query stays float32 (the fused scoring op takes only
    that) and the packed forward runs; its every-token logits are timm's own forward under the same
    autocast, within that dtype's rounding."""
    interp = tiny.interpreters[0]
    with torch.autocast("cpu", dtype=dtype):
        vecs, biases = interp.fold(torch.randn(2, tiny.vit.embed_dim))
        out = tiny(images, policy="all")
        want = tiny.vit(images)
        thr = tiny(images)
    assert vecs.dtype == biases.dtype == torch.float32
    assert out.scores.dtype == torch.float32 and out.heatmap.dtype == torch.float32
    scale = want.float().abs().max()
    assert (out.logits.float() - want.float()).abs().max() <= 0.05 * scale
    assert thr.keep_masks.shape == out.keep_masks.shape and bool((thr.kept_counts <= out.kept_counts).all())


def test_heatmap_and_flops(tiny, images):
    with torch.no_grad():
        full = tiny(images, policy="all")
        half = tiny(images, policy="level", level=0.5)
    assert half.heatmap.shape == (3, 14, 14)
    assert 0 <= half.heatmap.min() and half.heatmap.max() <= 1
    # Reference, patch by patch in float64: survival probability (product over stages, 0 once
    # dropped), ties broken by 1% of the mean score, then the weighted mean over the patch's 3x3
    # neighbourhood inside the grid (weights 4 centre, 2 side, 1 corner).
    sc = half.scores.double()
    per = torch.zeros(3, 14, 14, dtype=torch.float64)
    for b in range(3):
        for j in range(196):
            surv, total = 1.0, 0.0
            for s in range(sc.shape[1]):
                surv *= float(sc[b, s, j])
                total += float(sc[b, s, j])
            per[b, j // 14, j % 14] = 0.99 * surv + 0.01 * total / sc.shape[1]
    ref = torch.zeros(3, 14, 14, dtype=torch.float64)
    for b in range(3):
        for r in range(14):
            for c in range(14):
                num = den = 0.0
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        if 0 <= r + dr < 14 and 0 <= c + dc < 14:
                            w = (2 - abs(dr)) * (2 - abs(dc))
                            num += w * float(per[b, r + dr, c + dc])
                            den += w
                ref[b, r, c] = num / den
    assert torch.allclose(half.heatmap.double(), ref, atol=1e-6)
    assert (half.flops < full.flops).all()


def test_flops_match_published_deit_small():
    # DeiT paper: DeiT-S 4.6 G multiply-adds; we count a multiply-add as 2 FLOPs.
    model = IARedViT.from_timm("deit_small_patch16_224")
    assert abs(model.flops().item() / 2 / 4.6e9 - 1) < 0.03


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(3, 224, 224), "rank 4"),
        (torch.randn(1, 1, 224, 224), "channels"),
        (torch.randn(1, 3, 200, 224), "224x224"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "floating"),
        (torch.full((1, 3, 224, 224), float("nan")), "NaN"),
        (torch.randn(0, 3, 224, 224), "empty batch"),
    ],
)
def test_bad_images_raise_clear_errors(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("execution", ["packed", "masked"])
def test_one_nonfinite_pixel_is_refused(tiny, images, value, execution):
    """The finite check runs on the embedded tokens for timm's one-convolution stem (where they
    are in cache): one NaN or Inf pixel anywhere in any image of a batch still gets the error."""
    assert tiny._stem_propagates_nonfinite()
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        bad = images.clone()
        b, c, y, x = (int(torch.randint(n, (1,), generator=g)) for n in bad.shape)
        bad[b, c, y, x] = value
        with pytest.raises(ValueError, match="NaN or Inf"):
            tiny(bad, execution=execution)


def test_nonfinite_pixel_refused_through_a_clipping_stem(images):
    """A stem with a ReLU could clip an -Inf to 0 before the tokens: there the pixels are checked."""
    from iared_edge import load_model

    demo = load_model("demo").eval()
    assert not demo._stem_propagates_nonfinite()
    bad = torch.zeros(1, *demo.input_size)
    bad[0, 1, 5, 9] = float("-inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        demo(bad)


@pytest.mark.parametrize("case", ["pixels past the last patch", "patch dropout"])
def test_nonfinite_pixel_refused_where_tokens_may_not_carry_it(case):
    """Where some pixels never reach the tokens (an image not a whole number of patches wide) or a
    token may be dropped before the check (patch dropout while training), the pixels are checked."""
    torch.manual_seed(0)
    if case == "patch dropout":
        model = IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1), patch_drop_rate=0.9)
        assert model.eval()._stem_propagates_nonfinite()
        model.train()
    else:
        model = IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1), img_size=230).eval()
    assert not model._stem_propagates_nonfinite()
    bad = torch.zeros(1, *model.input_size)
    bad[0, 0, -1, -1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(bad, execution="masked")


def test_finite_pixels_whose_tokens_overflow_are_not_refused(tiny):
    """Huge finite pixels may overflow the embedding to Inf: the cheap check trips, the exact one
    on the pixels clears them (the same answer as checking the pixels alone)."""
    big = torch.full((1, 3, 224, 224), 3e38)
    assert not torch.isfinite(tiny._embed(big).sum())
    tiny(big, policy="all")  # no error


def test_bad_arguments(tiny, images):
    with pytest.raises(ValueError, match="policy"):
        tiny(images, policy="nope")
    with pytest.raises(ValueError, match="execution"):
        tiny(images, execution="nope")
    with pytest.raises(ValueError, match="needs level"):
        tiny(images, policy="level")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny(images, policy="level", level=1.5)
    with pytest.raises(ValueError, match="one per stage"):
        tiny(images, thresholds=(0.5, 0.5))
    with pytest.raises(ValueError, match="sum to"):
        IARedViT.from_timm("deit_tiny_patch16_224", groups=(4, 4))
    with pytest.raises(ValueError, match="unknown model 'deit_tiny_patch16'.*deit_tiny_patch16_224"):
        IARedViT.from_timm("deit_tiny_patch16")
    with pytest.raises(ValueError, match="class token"):
        IARedViT(timm.create_model("vit_tiny_patch16_224", global_pool="avg", class_token=False))


def test_keep_levels_follow_the_keep_profile(tiny, images):
    """A keep level is the level at every stage without a profile; with one, per-stage levels whose
    cumulative shares keep the profile's shape (where not capped at 1) and the uniform level's mean
    share, checked in float64 against the definition; the counts are what the model keeps."""
    assert tiny.stage_levels(0.6) == [0.6, 0.6, 0.6] and tiny.keep_profile is None
    profile = np.array([0.6, 0.6, 0.15])
    tiny.keep_profile = profile.tolist()
    try:
        for level in (1.0, 0.9, 0.6, 0.3, 0.1):
            r = np.array(tiny.stage_levels(level), dtype=np.float64)
            assert ((0 < r) & (r <= 1)).all()
            cum = np.cumprod(r)
            assert cum.mean() == pytest.approx(np.mean([level, level**2, level**3]), abs=1e-9)
            scale = cum / profile
            free = cum < 1 - 1e-9  # level 1 keeps everything: nothing to compare
            if free.any():
                assert np.allclose(scale[free], scale[free][0]) and (scale[~free] <= scale[free][0] + 1e-9).all()
        r = tiny.stage_levels(0.6)
        assert r[1] == pytest.approx(1.0)  # stage 2 keeps all stage 1 kept, as the profile says
        with torch.no_grad():
            out = tiny(images, policy="level", level=r)
        n, expect = tiny.num_patches, []
        for level in r:  # policy "level"'s rule: ceil(level * alive)
            n = min(n, math.ceil(level * n - 1e-6))
            expect.append(n)
        assert out.kept_counts[0].tolist() == expect
        assert tiny.stage_levels(0.0) == [0.0] * 3
        for bad in ([0.5, 0.6, 0.1], [0.5, 0.5], [0.5, 0.5, 0.0]):
            with pytest.raises(ValueError, match="keep_profile"):
                tiny.keep_profile = bad
        with pytest.raises(ValueError, match="keep level"):
            tiny.stage_levels(1.5)
    finally:
        tiny.keep_profile = None
