"""The GPU path, checked on a CPU: what a CUDA graph captures may not touch the host, and the
forward runs on fake CUDA tensors (devices, shapes and dtypes tracked, no GPU needed)."""
import pytest
import torch
from torch.func import functional_call

from iared_edge import IARedViT
from iared_edge.export.onnx import LevelGraph
from iared_edge.model import heatmap_from_scores
from iared_edge.runtime.capture_check import HostSyncError, capture_safe, fake_cuda, fake_cuda_mode


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1)).eval()


@pytest.mark.parametrize("make, op", [
    (lambda x: torch.tensor([1.0, 2.0, 1.0], device=x.device) * x.sum(), "lift_fresh"),
    (lambda x: x.sum().item(), "_local_scalar_dense"),
    (lambda x: bool((x > 0).any()), "_local_scalar_dense"),
    (lambda x: x.nonzero(), "nonzero"),
    (lambda x: x[x > 0], "boolean-mask indexing"),
    (lambda x: x.cpu(), "copies from cuda"),
])
def test_the_capture_check_refuses_every_host_op(make, op):
    with fake_cuda_mode():
        x = torch.randn(4, 5, device="cuda")
        with pytest.raises(HostSyncError, match=op):
            capture_safe(make, x)
    assert capture_safe(lambda x: (x * 2).softmax(-1).topk(2).indices, torch.randn(4, 5)).shape == (4, 2)


def test_the_heatmap_makes_its_kernel_on_the_device():
    """Fault: the heatmap's smoothing kernel was torch.tensor(a Python tuple), a host-to-device
    copy inside every captured graph, so Runtime(device="cuda", policy="level") and every budget
    Runtime raised at construction on a GPU. Against the float64 reference, too."""
    scores = torch.rand(2, 3, 16)
    heat = capture_safe(heatmap_from_scores, scores, (4, 4))
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k = torch.outer(k, k)[None, None]
    per = (0.99 * scores.double().prod(1) + 0.01 * scores.double().mean(1)).view(2, 1, 4, 4)
    ref = torch.nn.functional.conv2d(per, k, padding=1) / torch.nn.functional.conv2d(
        torch.ones(1, 1, 4, 4, dtype=torch.float64), k, padding=1)
    assert torch.allclose(heat.double(), ref.view(2, 4, 4), atol=1e-6)


@pytest.mark.parametrize("level", [1.0, 0.5, 0.1])
def test_what_the_runtime_captures_is_capture_safe(small, level):
    """CudaGraphLevels captures LevelGraph per keep level: no host op in it, on the CPU and on
    fake CUDA (where a copy to or from the host shows as an op too)."""
    graph = LevelGraph(small, small.stage_levels(level)).eval()
    with torch.inference_mode():
        capture_safe(graph, torch.randn(1, 3, 224, 224))
    for dtype in (torch.float32, torch.float16):
        with fake_cuda_mode() as mode, torch.inference_mode():
            state = fake_cuda(graph, mode, dtype=dtype)
            out = capture_safe(functional_call, graph, state, (torch.randn(1, 3, 224, 224, device="cuda", dtype=dtype),))
            assert all(o.device.type == "cuda" for o in out)
            assert out[0].shape == (1, 1000) and out[-1].shape == (1, 14, 14)
