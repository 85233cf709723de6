"""Training-free start and threshold calibration (issue 5)."""

import os

import numpy as np
import pytest
import torch

from iared_edge import IARedViT, load_model
from iared_edge.cli import main
from iared_edge.train import calibrate_thresholds, geometric_keep_targets, measure_keep_profile, scaled_keep_targets

cv2 = pytest.importorskip("cv2")
CLIP = os.path.join(os.path.dirname(__file__), "data", "vtest_short.avi")


def test_training_free_start_ranks_like_class_token_attention():
    torch.manual_seed(0)
    model = IARedViT.from_timm("deit_small_patch16_224").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        h = model._embed(x)
        for s in range(model.num_stages):
            blk = model.stage_blocks(s)[0]
            # the block's own class-token attention logits, straight from timm's modules
            attn = blk.attn
            qkv = attn.qkv(blk.norm1(h)).view(2, h.shape[1], 3, attn.num_heads, attn.head_dim)
            q, k = qkv[:, :, 0], qkv[:, :, 1]
            logits = torch.einsum("bhd,blhd->bhl", q[:, 0] * attn.scale, k)
            expect = torch.sigmoid(logits).mean(1)
            got = model.interpreters[s](h)
            assert torch.allclose(got, expect, atol=1e-5)
            for b in range(2):  # so the rankings agree
                assert torch.equal(
                    got[b, 1:].argsort(descending=True)[:20], expect[b, 1:].argsort(descending=True)[:20]
                )
            for blk in model.stage_blocks(s):
                h = blk(h)


def test_geometric_targets():
    t = geometric_keep_targets(0.5, 3)
    assert abs(np.mean(t) - 0.5) < 1e-9 and t[0] > t[1] > t[2]
    assert geometric_keep_targets(1.0, 3) == pytest.approx([1, 1, 1])
    with pytest.raises(ValueError, match="keep"):
        geometric_keep_targets(0.0, 3)


def clip_batches():
    """Random crops of the real clip: even frames to calibrate on, odd frames held out."""
    cap = cv2.VideoCapture(CLIP)
    frames = [cap.read()[1] for _ in range(30)]
    rng = np.random.default_rng(0)
    sets = ([], [])
    for i, f in enumerate(frames):
        for _ in range(5):
            size = int(rng.integers(120, 280))
            y, x = rng.integers(0, 288 - size + 1), rng.integers(0, 384 - size + 1)
            crop = cv2.resize(f[y : y + size, x : x + size, ::-1], (224, 224)).astype(np.float32) / 255
            sets[i % 2].append(torch.from_numpy((crop - 0.45) / 0.225).permute(2, 0, 1))
    return torch.stack(sets[0]), torch.stack(sets[1])


@pytest.mark.parametrize("keep", [0.4, 0.6])
def test_calibration_hits_the_target_on_held_out_images(keep):
    torch.manual_seed(1)
    model = IARedViT.from_timm("deit_tiny_patch16_224").eval()
    calib, held_out = clip_batches()
    thresholds = calibrate_thresholds(model, calib.split(25), keep)
    assert model.thresholds == thresholds and len(thresholds) == 3
    with torch.no_grad():
        got = model(calib, policy="threshold").keep_ratio.mean().item()
        held = model(held_out, policy="threshold").keep_ratio.mean().item()
    assert abs(got - keep) < 0.01
    assert abs(held - keep) <= 0.02


def test_calibration_hits_per_stage_targets_on_held_out_images():
    torch.manual_seed(1)
    model = IARedViT.from_timm("deit_tiny_patch16_224").eval()
    calib, held_out = clip_batches()
    targets = [0.5, 0.5, 0.2]  # stage 2 keeps all that stage 1 kept, as REINFORCE learned on the demo
    calibrate_thresholds(model, calib.split(25), targets)
    with torch.no_grad():
        held = model(held_out, policy="threshold").keep_ratio.mean(0)
    assert (held - torch.tensor(targets)).abs().max().item() <= 0.02
    with pytest.raises(ValueError, match="non-increasing"):
        calibrate_thresholds(model, calib.split(25), [0.3, 0.5, 0.2])


def test_scaled_targets():
    t = scaled_keep_targets(0.3, [0.4, 0.4, 0.1])
    assert np.mean(t) == pytest.approx(0.3) and t[0] == pytest.approx(t[1]) and t[0] / t[2] == pytest.approx(4)
    t = scaled_keep_targets(0.7, [0.8, 0.4, 0.1])  # stage 1 saturates at 1, the others keep the level
    assert t[0] == 1.0 and np.mean(t) == pytest.approx(0.7) and t[1] / t[2] == pytest.approx(4)
    with pytest.raises(ValueError, match="drops entirely"):
        scaled_keep_targets(0.9, [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="no patch tokens"):
        scaled_keep_targets(0.3, [0.0, 0.0, 0.0])


def test_learned_shape_keeps_the_models_own_allocation():
    """shape="learned" scales the per-stage keeps the model's thresholds give (here set to keep
    0.6 / 0.6 / 0.15 on the calibration images) to the target, not a geometric spread."""
    torch.manual_seed(1)
    model = IARedViT.from_timm("deit_tiny_patch16_224").eval()
    calib, held_out = clip_batches()
    calibrate_thresholds(model, calib.split(25), [0.6, 0.6, 0.15])
    with torch.no_grad():
        before = model(calib, policy="threshold").keep_ratio.mean(0)
    calibrate_thresholds(model, calib.split(25), 0.2, shape="learned")
    with torch.no_grad():
        got = model(calib, policy="threshold").keep_ratio.mean(0)
        held = model(held_out, policy="threshold").keep_ratio.mean().item()
    expect = before * 0.2 / before.mean()  # no stage saturates here
    assert (got - expect).abs().max().item() < 0.01
    assert abs(held - 0.2) <= 0.02
    assert model.keep_profile == pytest.approx(expect.tolist(), abs=0.01)  # the Runtime's levels follow it
    assert measure_keep_profile(model, held_out.split(25)) == pytest.approx(
        model(held_out, policy="threshold").keep_ratio.mean(0).tolist(), abs=1e-6
    )
    with pytest.raises(ValueError, match="shape"):
        calibrate_thresholds(model, calib.split(25), 0.2, shape="linear")


def test_calibrate_cli_saves_thresholds(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    cap = cv2.VideoCapture(CLIP)
    for i in range(6):
        cv2.imwrite(str(images / f"{i}.png"), cap.read()[1])
    out = tmp_path / "m.safetensors"
    assert (
        main(
            [
                "calibrate",
                "--model",
                "deit_tiny_patch16_224",
                "--images",
                str(images),
                "--keep",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "thresholds per stage" in capsys.readouterr().out
    assert load_model(str(out)).thresholds != [0.5, 0.5, 0.5]
    assert (
        main(["calibrate", "--model", str(out), "--images", str(images), "--keep", "0.3", "--shape", "learned"]) == 0
    )  # saved back into the model file
    assert load_model(str(out)).thresholds != [0.5, 0.5, 0.5]
    assert main(["calibrate", "--model", "deit_tiny_patch16_224", "--images", str(tmp_path / "none")]) == 2


def tiny_vit(seed=0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=4)
    return IARedViT(vit, groups=(1, 1, 1)).eval()


def test_rewards_by_hand():
    from iared_edge.train import rewards

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labels = torch.tensor([0, 0, 0])
    keep = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 0.5, 0.0]])
    w = torch.tensor([0.25, 0.25, 0.5])
    r = rewards(logits, labels, keep, w, penalty=2.0)
    assert r.tolist() == pytest.approx([0.5, -2.0, 0.25 * 0 + 0.25 * 0.5 + 0.5 * 1.0])


def test_per_stage_policies_agree_across_executions():
    model = tiny_vit()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        p = model(x, policy=("threshold", "all", "level"), level=0.5)
        m = model(x, policy=("threshold", "all", "level"), level=0.5, execution="masked")
    assert torch.equal(p.keep_masks, m.keep_masks) and torch.allclose(p.logits, m.logits, atol=1e-5)
    assert torch.equal(p.keep_masks[:, 1], p.keep_masks[:, 0])  # "all" drops nothing more
    with pytest.raises(ValueError, match="per stage"):
        model(x, policy=("threshold", "all"))


def test_reinforce_short_run_trains_only_the_interpreters_and_drops_tokens():
    from iared_edge.train import ReinforceConfig, freeze_backbone, reinforce_step

    model = tiny_vit(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g)
    with torch.no_grad():
        labels = model(x, policy="all").logits.argmax(-1)  # right with every token
    backbone = {k: v.clone() for k, v in model.vit.state_dict().items()}
    interp = {k: v.clone() for k, v in model.interpreters.state_dict().items()}
    opt = torch.optim.Adam(freeze_backbone(model), lr=3e-2)
    torch.manual_seed(0)
    logs = [reinforce_step(model, x, labels, opt, stages=1, config=ReinforceConfig(penalty=0.0)) for _ in range(40)]
    assert all(torch.equal(v, model.vit.state_dict()[k]) for k, v in backbone.items())
    assert not all(torch.equal(v, model.interpreters.state_dict()[k]) for k, v in interp.items())
    # stages 2 and 3 untouched by the stage-1 curriculum step
    assert all(torch.equal(v, model.interpreters.state_dict()[k]) for k, v in interp.items() if not k.startswith("0."))
    assert logs[-1]["keep2"] == logs[-1]["keep1"]  # later stages kept everything left
    # with no penalty for mistakes the policy learns to drop: fewer tokens, higher reward
    assert logs[-1]["keep1"] < logs[0]["keep1"] - 0.1
    assert np.mean([r["greedy_reward"] for r in logs[-5:]]) > np.mean([r["greedy_reward"] for r in logs[:5]])
    with pytest.raises(ValueError, match="stages"):
        reinforce_step(model, x, labels, opt, stages=4)


def test_reinforce_with_a_penalty_learns_which_tokens_matter():
    from iared_edge.train import ReinforceConfig, freeze_backbone, reinforce_step

    model = tiny_vit(1)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(x, policy="all").logits.argmax(-1)
    opt = torch.optim.Adam(freeze_backbone(model), lr=3e-2)
    torch.manual_seed(0)
    logs = [reinforce_step(model, x, labels, opt, stages=1, config=ReinforceConfig(penalty=1.0)) for _ in range(40)]
    # at about the same keep level, the greedy decisions got more predictions right
    assert abs(logs[-1]["keep1"] - logs[0]["keep1"]) < 0.08
    assert logs[-1]["accuracy"] >= logs[0]["accuracy"] + 0.08


@pytest.mark.slow
def test_training_loop_resumes_exactly(tmp_path):
    from iared_edge.train import train_interpreters

    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(4))
    val = [(x[:8], y[:8])]

    class CutAfter:  # a loader whose run is interrupted after n batches
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            for _ in range(self.n):
                yield x, y
            raise KeyboardInterrupt

    whole = tiny_vit(2)
    h1 = train_interpreters(whole, [(x, y)], val, steps_per_stage=2, lr=1e-2, val_every=3, progress=False)
    assert [h["stages"] for h in h1] == [1, 1, 2, 2, 3, 3] and "val_accuracy" in h1[2] and "val_keep3" in h1[-1]
    ckpt = str(tmp_path / "run" / "interp.pt")
    with pytest.raises(KeyboardInterrupt):
        train_interpreters(
            tiny_vit(2),
            CutAfter(3),
            val,
            steps_per_stage=2,
            lr=1e-2,
            val_every=3,
            checkpoint=ckpt,
            save_every=1,
            progress=False,
        )
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    resumed = tiny_vit(2)  # fresh interpreters: everything must come from the checkpoint
    h2 = train_interpreters(
        resumed, [(x, y)], val, steps_per_stage=2, lr=1e-2, val_every=3, checkpoint=ckpt, progress=False
    )
    assert [h["step"] for h in h2] == [1, 2, 3, 4, 5, 6]
    for k, v in whole.interpreters.state_dict().items():
        assert torch.equal(v, resumed.interpreters.state_dict()[k]), k


def test_train_cli_on_image_folders(tmp_path, capsys):
    from iared_edge import save_model

    model = IARedViT.from_timm("deit_tiny_patch16_224", img_size=64, num_classes=2, groups=(4, 4, 4))
    path = str(tmp_path / "tiny.safetensors")
    save_model(model, path)
    cap = cv2.VideoCapture(CLIP)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / cls)
            for i in range(4):
                cv2.imwrite(str(tmp_path / "data" / split / cls / f"{i}.png"), cap.read()[1][:96, :96])
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                path,
                "--data",
                str(tmp_path / "data"),
                "--out-dir",
                str(out),
                "--steps",
                "1",
                "--batch",
                "4",
                "--workers",
                "0",
                "--val-every",
                "1",
            ]
        )
        == 0
    )
    assert "val accuracy" in capsys.readouterr().out
    trained = load_model(str(out / "model.safetensors"))
    assert trained.labels == ["a", "b"] and (out / "history.json").exists() and (out / "interpreters.pt").exists()
    assert main(["train", "--model", path, "--data", str(tmp_path / "nothing")]) == 2


def test_distill_loss_against_float64():
    from iared_edge.train import distill_loss

    s, t = torch.randn(5, 7), torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    tau, alpha = 2.0, 0.3
    sd, td = s.double(), t.double()
    pt = (td / tau).softmax(-1)
    kl = (pt * (pt.log() - (sd / tau).log_softmax(-1))).sum(-1).mean() * tau**2
    ce = -sd.log_softmax(-1)[torch.arange(5), y].mean()
    assert distill_loss(s, t, y, alpha, tau).item() == pytest.approx((alpha * kl + (1 - alpha) * ce).item(), rel=1e-5)


def test_finetune_recovers_accuracy_under_dropping_and_leaves_interpreters_alone(tmp_path):
    from iared_edge.train import finetune_backbone

    model = tiny_vit(5)
    for interp in model.interpreters:  # make the policy drop about half the tokens
        torch.nn.init.normal_(interp.qk.weight, std=0.5)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = model(x, policy="all").logits.argmax(-1)  # the full model's answers
        before = (model(x, policy="threshold").logits.argmax(-1) == y).float().mean().item()
        keep = model(x, policy="threshold").keep_ratio.mean().item()
    assert 0.05 < keep < 0.9 and before < 0.95
    interp = {k: v.clone() for k, v in model.interpreters.state_dict().items()}
    hist = finetune_backbone(
        model, [(x, y)], steps=30, lr=3e-3, alpha=0.5, progress=False, checkpoint=str(tmp_path / "ft.pt"), save_every=10
    )
    with torch.no_grad():
        after = (model(x, policy="threshold").logits.argmax(-1) == y).float().mean().item()
    assert after >= before + 0.05 and hist[-1]["loss"] < hist[0]["loss"]
    assert all(torch.equal(v, model.interpreters.state_dict()[k]) for k, v in interp.items())
    assert torch.load(str(tmp_path / "ft.pt"), weights_only=True)["step"] == 30
    with pytest.raises(ValueError, match="policy"):
        finetune_backbone(model, [(x, y)], steps=1, policy="all")


@pytest.mark.slow
def test_torchrun_ddp_keeps_ranks_in_step(tmp_path):
    """Two CPU processes under torchrun (Gloo): different data per rank, identical weights after
    DDP's gradient averaging, and different from one process alone on rank 0's data."""
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "workers", "ddp_train.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = (torch.load(str(tmp_path / f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for part in ("interpreters", "backbone"):
        for k, v in r0[part].items():
            assert torch.equal(v, r1[part][k]), (part, k)
    start = tiny_vit(2)
    assert not all(torch.equal(v, start.interpreters.state_dict()[k]) for k, v in r0["interpreters"].items())


def test_paired_comparison_against_scipy_and_a_float64_loop():
    from scipy.stats import binomtest

    from iared_edge.train import paired_comparison

    rng = np.random.default_rng(0)
    for n, pa, pb in [(1000, 0.9, 0.88), (200, 0.5, 0.6), (37, 0.3, 0.3), (5000, 0.5, 0.5)]:  # last: > 1,023 discordant
        a, b = rng.random(n) < pa, rng.random(n) < pb
        r = paired_comparison(a, b)
        d = [float(x) - float(y) for x, y in zip(a, b)]  # per-image differences
        mean = sum(d) / n
        sd = (sum((v - mean) ** 2 for v in d) / n) ** 0.5
        assert r["difference"] == pytest.approx(a.mean() - b.mean())
        assert r["ci95_high"] - r["difference"] == pytest.approx(1.96 * sd / n**0.5)
        m, k = int((a & ~b).sum() + (~a & b).sum()), int((a & ~b).sum())
        assert r["only_a_right"] + r["only_b_right"] == m
        assert r["mcnemar_p"] == pytest.approx(binomtest(k, m, 0.5).pvalue if m else 1.0)
    same = paired_comparison([True, False, True], [True, False, True])
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="equal"):
        paired_comparison([True, False], [True])
