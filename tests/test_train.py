"""Training-free start and threshold calibration (issue 5)."""
import os

import numpy as np
import pytest
import torch

from iared_edge import IARedViT, load_model
from iared_edge.cli import main
from iared_edge.train import calibrate_thresholds, geometric_keep_targets

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
                assert torch.equal(got[b, 1:].argsort(descending=True)[:20], expect[b, 1:].argsort(descending=True)[:20])
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
            crop = cv2.resize(f[y:y + size, x:x + size, ::-1], (224, 224)).astype(np.float32) / 255
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


def test_calibrate_cli_saves_thresholds(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    cap = cv2.VideoCapture(CLIP)
    for i in range(6):
        cv2.imwrite(str(images / f"{i}.png"), cap.read()[1])
    out = tmp_path / "m.safetensors"
    assert main(["calibrate", "--model", "deit_tiny_patch16_224", "--images", str(images), "--keep", "0.5",
                 "--out", str(out)]) == 0
    assert "thresholds per stage" in capsys.readouterr().out
    assert load_model(str(out)).thresholds != [0.5, 0.5, 0.5]
    assert main(["calibrate", "--model", "deit_tiny_patch16_224", "--images", str(tmp_path / "none")]) == 2
