"""`device=` arguments: resolved, or refused with an error that names the problem."""

import pytest
import torch

from iared_edge import Runtime
from iared_edge.devices import autocast_dtype, resolve_device


def test_auto_and_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x", "", 3.5])
def test_unknown_devices_are_named(bad):
    with pytest.raises(ValueError, match="device must be"):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Runtime("demo", device="cuda:0")


@pytest.mark.gpu
def test_cuda_index_beyond_the_devices_is_named():
    n = torch.cuda.device_count()
    assert resolve_device("cuda:0").type == "cuda"
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{n}")


def test_runtime_topk_is_checked_and_capped():
    with pytest.raises(ValueError, match="topk"):
        Runtime("demo", topk=0)
    assert Runtime("demo", topk=50).topk == 10  # the demo model has 10 classes


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)]
)
def test_cpu_autocast_only_where_the_cpu_has_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    # elsewhere torch emulates bf16: a demo training step ran 16x slower than in float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert autocast_dtype("cpu") is expected
    # a name other than "auto" means its dtype wherever the CPU is
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16 and autocast_dtype("cpu", "none") is None


def test_unknown_autocast_names_are_refused():
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast_dtype("cpu", "fp8")


def test_demo_schedule_amp_is_resolved_or_refused(monkeypatch):
    from iared_edge.demo.train import Schedule, amp_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert amp_dtype(Schedule()) is None and amp_dtype(Schedule(amp="bf16")) is torch.bfloat16
    assert amp_dtype(Schedule(amp="none")) is None
    with pytest.raises(ValueError, match="amp must be"):
        amp_dtype(Schedule(amp="fp8"))


@pytest.mark.parametrize(
    "device, avx512_bf16, amx, expected",
    [("cpu", False, False, torch.float32), ("cpu", True, False, torch.bfloat16), ("cpu", False, True, torch.bfloat16)],
)
def test_inference_precision_auto_picks_what_the_hardware_runs_natively(
    monkeypatch, device, avx512_bf16, amx, expected
):
    from iared_edge.devices import inference_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert inference_dtype(device, "auto") is expected
    assert inference_dtype("cuda", "auto") is torch.float16  # no GPU needed to name the choice
    assert [inference_dtype(device, p) for p in ("fp32", "fp16", "bf16")] == [
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ]
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_dtype(device, "half")


def test_cpu_bf16_probe_works_on_a_torch_without_the_probes(monkeypatch):
    """NVIDIA's JetPack 6.0 torch (2.4) has no torch.cpu._is_avx512_bf16_supported (torch 2.5):
    `iared-edge info` and precision "auto" must not raise there."""
    from iared_edge.devices import cpu_has_bf16

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_bf16() is False
