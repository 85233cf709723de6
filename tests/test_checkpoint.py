import os

import pytest
import torch

from iared_edge import IARedViT, load_model, save_model


def test_round_trip_is_exact(tmp_path, tiny, images):
    tiny.thresholds = [0.4, 0.5, 0.6]
    tiny.labels = [f"c{i}" for i in range(1000)]
    tiny.keep_profile = [0.5, 0.5, 0.1]
    path = str(tmp_path / "m.safetensors")
    save_model(tiny, path)
    back = load_model(path)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    assert back.thresholds == [0.4, 0.5, 0.6] and back.labels == tiny.labels and back.groups == tiny.groups
    assert back.keep_profile == [0.5, 0.5, 0.1]
    with torch.no_grad():
        assert torch.equal(tiny(images).logits, back(images).logits)
    tiny.thresholds, tiny.labels, tiny.keep_profile = [0.5] * 3, None, None


def test_fp16_save_is_half_the_size(tmp_path, tiny):
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_model(tiny, a)
    save_model(tiny, b, dtype=torch.float16)
    assert os.path.getsize(b) < 0.55 * os.path.getsize(a)
    assert load_model(b).vit.pos_embed.dtype == torch.float32


def test_timm_state_dict_loads(tmp_path):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("deit_tiny_patch16_224")
    pth = str(tmp_path / "deit.pth")
    torch.save({"model": vit.state_dict(), "epoch": 3}, pth)  # the official DeiT release layout
    model = IARedViT.from_timm("deit_tiny_patch16_224", checkpoint=pth).eval()
    for k, v in vit.state_dict().items():
        assert torch.equal(model.vit.state_dict()[k], v)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x, policy="all").logits, vit.eval()(x), atol=1e-5)


def test_bad_files_get_clear_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(str(tmp_path / "missing.safetensors"))
    path = str(tmp_path / "m.safetensors")
    save_model(tiny, path)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.safetensors")
    open(cut, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_model(cut)
    foreign = str(tmp_path / "foreign.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="no iared-edge config"):
        load_model(foreign)
    junk = str(tmp_path / "junk.pth")
    open(junk, "wb").write(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth"):
        IARedViT.from_timm("deit_tiny_patch16_224", checkpoint=junk)
    small = str(tmp_path / "small.pth")
    torch.save({"model": IARedViT.from_timm("deit_small_patch16_224").vit.state_dict()}, small)
    with pytest.raises(ValueError, match="shape mismatch"):
        IARedViT.from_timm("deit_tiny_patch16_224", checkpoint=small)


def test_pickled_code_is_refused(tmp_path):
    evil = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "obj": object()}, evil)
    with pytest.raises(ValueError, match="weights-only"):
        IARedViT.from_timm("deit_tiny_patch16_224", checkpoint=evil)
