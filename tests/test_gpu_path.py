"""The GPU path, checked on a CPU: what a CUDA graph captures may not touch the host, and the
forward runs on fake CUDA tensors (devices, shapes and dtypes tracked, no GPU needed)."""

import numpy as np
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


@pytest.mark.parametrize(
    "make, op",
    [
        (lambda x: torch.tensor([1.0, 2.0, 1.0], device=x.device) * x.sum(), "lift_fresh"),
        (lambda x: x.sum().item(), "_local_scalar_dense"),
        (lambda x: bool((x > 0).any()), "_local_scalar_dense"),
        (lambda x: x.nonzero(), "nonzero"),
        (lambda x: x[x > 0], "boolean-mask indexing"),
        (lambda x: x.cpu(), "copies from cuda"),
    ],
)
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
        torch.ones(1, 1, 4, 4, dtype=torch.float64), k, padding=1
    )
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
            out = capture_safe(
                functional_call, graph, state, (torch.randn(1, 3, 224, 224, device="cuda", dtype=dtype),)
            )
            assert all(o.device.type == "cuda" for o in out)
            assert out[0].shape == (1, 1000) and out[-1].shape == (1, 14, 14)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("execution", ["masked", "packed"])
@pytest.mark.parametrize("policy, kwargs", [("all", {}), ("level", {"level": 0.5}), ("threshold", {})])
def test_the_forward_runs_on_fake_cuda(small, policy, kwargs, execution, dtype):
    """Every parameter and input on (fake) CUDA: the forward completes with every output on the
    device, in the dtypes and shapes the CPU forward gives. A host read would raise here (fake
    tensors have no data), so this also shows the GPU forward reads nothing back but the packed
    size (a data-dependent size, a symbol here)."""
    x = torch.randn(2, 3, 224, 224)
    names = ("logits", "keep_masks", "scores", "kept_counts", "heatmap", "flops")
    with torch.no_grad():
        out = small(x, policy=policy, execution=execution, **kwargs)
        ref = {name: getattr(out, name) for name in names}  # built here, outside the fake mode
    with fake_cuda_mode() as mode:
        state = fake_cuda(small, mode, dtype=dtype)
        xf = mode.from_tensor(x).to("cuda", dtype)
        out = functional_call(small, state, (xf,), dict(policy=policy, execution=execution, **kwargs))
        for name in names:  # built lazily, so inside the mode
            got, want = getattr(out, name), ref[name]
            assert got.device.type == "cuda", name
            assert tuple(got.shape) == tuple(want.shape), name
        assert out.keep_masks.dtype == torch.bool and out.heatmap.dtype == torch.float32
        assert out.logits.dtype == dtype


def _stage(tokens, offsets, positions, vecs, biases):
    """One stage of the packed forward on the compiled ops: score, keep the top half, compact."""
    from iared_edge import ops

    probs, _ = ops.interpreter_scores(tokens, offsets, vecs, biases, None, positions, 1)
    keep = ops.topk_keep(probs, offsets, positions, 0.5, 1)
    return ops.compact(tokens, offsets, positions, keep, 1)


def _batch():
    from tests.test_ops import make_batch

    return make_batch([7, 12, 1], 24, 3, torch.float32, seed=3)


def test_the_ops_trace_through_torch_export():
    """The fake kernels let torch.export trace the compiled ops, the compaction's row count a
    data-dependent size; the exported program answers as eager does."""
    from iared_edge import ops

    if ops.backend("cpu") != "cpu":
        pytest.skip("iared_edge._C not built")

    class Stage(torch.nn.Module):
        def forward(self, tokens, offsets, positions, vecs, biases):
            return _stage(tokens, offsets, positions, vecs, biases)

    args = tuple(_batch())
    program = torch.export.export(Stage(), args)
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"iared.interpreter_scores.default", "iared.topk_keep.default", "iared.compact.default"} <= names
    for got, want in zip(program.module()(*args), _stage(*args)):
        assert torch.equal(got, want)


def test_the_ops_compile_in_one_graph():
    from iared_edge import ops

    if ops.backend("cpu") != "cpu":
        pytest.skip("iared_edge._C not built")
    torch._dynamo.reset()
    compiled = torch.compile(_stage, backend="aot_eager", fullgraph=True)
    args = _batch()
    for got, want in zip(compiled(*args), _stage(*args)):
        assert torch.equal(got, want)


def test_select_stage_traces_through_torch_export_and_compiles():
    """The CPU's one-call stage has a fake kernel too: torch.export records it (its kept row count
    a data-dependent size) and torch.compile takes it in one graph; both answer as eager does."""
    from iared_edge import ops

    if ops.backend("cpu") != "cpu":
        pytest.skip("iared_edge._C not built")
    tokens, offsets, positions, _, _ = _batch()
    g = torch.Generator().manual_seed(4)
    weights = tuple(torch.randn(*shape, generator=g) for shape in ((24, 24), (24,), (24, 24), (24,)))

    class Stage(torch.nn.Module):
        def forward(self, tokens, offsets, positions):
            return ops.select_stage(tokens, offsets, positions, weights, 3, level=0.5)

    args = (tokens, offsets, positions)
    want = Stage()(*args)
    program = torch.export.export(Stage(), args)
    assert "iared.select_stage.default" in {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    torch._dynamo.reset()
    compiled = torch.compile(Stage(), backend="aot_eager", fullgraph=True)
    for got in (program.module()(*args), compiled(*args)):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_select_stage_on_fake_cuda_runs_the_four_ops_and_names_bad_weights():
    """On (fake) CUDA ops.select_stage is the fold's matmuls and the CUDA ops: outputs on the device
    in the shapes the CPU gives; weights of the wrong shape get the fold's own error."""
    from iared_edge import ops

    tokens, offsets, positions, _, _ = _batch()
    weights = (torch.randn(24, 24), torch.randn(24), torch.randn(24, 24), torch.randn(24))
    want = ops.select_stage(tokens, offsets, positions, weights, 3, level=0.5)
    with fake_cuda_mode() as mode:
        cuda = [mode.from_tensor(t).to("cuda") for t in (tokens, offsets, positions, *weights)]
        got = ops.select_stage(*cuda[:3], tuple(cuda[3:]), 3, level=0.5)
        assert [t.device.type for t in got] == ["cuda"] * 4
        assert got[0].shape == want[0].shape and got[1].shape[1] == want[1].shape[1]
        with pytest.raises(ValueError, match="wk must be"):
            ops.select_stage(*cuda[:3], (cuda[3], cuda[4], cuda[5][:12], cuda[6]), 3, level=0.5)


def test_the_gpu_route_folds_in_float32_under_autocast(small, monkeypatch):
    """On a GPU a stage's selection is the fold as the reference's matmuls, then the CUDA ops: a
    caller's autocast must not reach the fold (the scoring kernel takes float32 vectors only).
    The same route on the CPU: the reference fold, the compiled ops after it."""
    from iared_edge import ops

    for name in ("_stage_direct", "_stage_op", "_fold_direct", "_fold_op"):
        monkeypatch.setattr(ops, name, None)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for policy, kwargs in (("level", {"level": 0.5}), ("threshold", {})):
            out = small(x, policy=policy, **kwargs)
            assert out.scores.dtype == torch.float32 and out.logits.shape == (2, 1000)


def test_the_gpu_attention_without_host_lengths_matches_the_per_image_path():
    """The fp32 path a GPU takes (no lengths read back: one SDPA with a block-diagonal mask), run
    on the CPU, against the per-image path on the same packed buffer."""
    from iared_edge.packed import Sequences, packed_attention

    torch.manual_seed(0)
    vit = IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1)).vit
    attn = vit.blocks[0].attn.eval()
    lengths = [5, 1, 9, 3]
    x = torch.randn(sum(lengths), 192)
    offsets = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    with torch.no_grad():
        per_image = packed_attention(attn, x, lengths)
        masked = packed_attention(attn, x, Sequences(offsets, max_len=9, lengths=None))
    assert torch.allclose(masked, per_image, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_cuda_attention_paths_match_the_per_image_path(dtype):
    """On a GPU: flash varlen (fp16/bf16, one launch) or the masked SDPA (fp32) against SDPA per
    image, in the same dtype, and the packed forward against the CPU's."""
    from iared_edge.packed import Sequences, packed_attention

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    attn = IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1)).vit.blocks[0].attn
    attn = attn.to("cuda", dtype).eval()
    lengths = [197, 40, 1, 120]
    x = torch.randn(sum(lengths), 192, device="cuda", dtype=dtype)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    with torch.no_grad():
        per_image = packed_attention(attn, x, lengths)
        fused = packed_attention(attn, x, Sequences(offsets, max_len=197, lengths=None))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(fused.float(), per_image.float(), atol=tol, rtol=tol)


def test_every_backend_runs_on_the_runtime_stream(tiny, monkeypatch):
    """Fault: the frame was copied on the Runtime's own stream (non-blocking), but CUDA graphs and
    TensorRT read it on the current stream, which never waited for the copy. Now every backend
    is called with the Runtime's stream current. Checked here with a stand-in stream."""
    from contextlib import contextmanager

    from iared_edge import Runtime

    current = []

    @contextmanager
    def stream(s):
        current.append(s)
        try:
            yield
        finally:
            current.pop()

    rt = Runtime(tiny, device="cpu", policy="level", level=0.5)
    seen = []
    real = rt._backend

    def backend(images, level):
        seen.append(current[-1] if current else None)
        return real(images, level)

    backend.fixed_batch, backend.levels = None, []
    sentinel = object()
    monkeypatch.setattr(torch.cuda, "stream", stream)
    rt._backend, rt._stream = backend, sentinel
    rt._time_model(torch.zeros(1, 3, 224, 224), 0.5)
    assert seen == [sentinel]


def test_the_extension_refuses_tensors_on_a_device_it_has_no_kernels_for():
    """Fault: an extension built without CUDA, given CUDA tensors through iared_edge._C, read
    device memory as host memory (uninitialised output or a segfault). The same guard refuses any
    device without kernels; a meta tensor shows it on a CPU."""
    from iared_edge import ops

    if ops._C is None:
        pytest.skip("iared_edge._C not built")
    tokens, offsets, positions, vecs, biases = (t.to("meta") for t in _batch())
    keep = torch.ones(tokens.shape[0], dtype=torch.bool, device="meta")
    for call in (
        lambda: ops._C.compact(tokens, offsets, positions, keep, 1, None),
        lambda: ops._C.topk_keep(torch.zeros(tokens.shape[0], device="meta"), offsets, positions, 0.5, 1),
        lambda: ops._C.interpreter_scores(tokens, offsets, positions, vecs, biases, 0.5, 1, 1e-6, True),
    ):
        with pytest.raises(ValueError, match="tensors on meta"):
            call()


def _cuobjdump():
    import glob
    import shutil

    found = shutil.which("cuobjdump") or glob.glob("/usr/local/cuda/bin/cuobjdump")
    if not found:  # Triton's wheel carries one
        import importlib.util

        spec = importlib.util.find_spec("triton")
        if spec and spec.submodule_search_locations:
            found = glob.glob(spec.submodule_search_locations[0] + "/backends/nvidia/bin/cuobjdump")
    return found if isinstance(found, str) else (found[0] if found else None)


def test_the_cuda_build_carries_sass_for_its_archs_and_ptx_for_newer_gpus():
    """Fault: no PTX was built, so on a GPU outside the arch list the kernels did not run at all.
    The make build (TORCH_CUDA_ARCH_LIST 8.7;9.0+PTX) must carry SASS for sm_87 and sm_90 and PTX."""
    import subprocess

    from iared_edge import _build_info, ops

    if ops._C is None or not ops._CUDA_BUILT:
        pytest.skip("no CUDA build of iared_edge._C here")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump")
    lib = ops._C.__file__
    elf = subprocess.run([tool, "--list-elf", lib], capture_output=True, text=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", lib], capture_output=True, text=True).stdout
    archs = _build_info.BUILT.split("sm ")[1].split(",")[0].split(";")
    for arch in archs:
        assert f"sm_{arch.replace('+PTX', '').replace('.', '')}" in elf, (arch, elf)
    ptx_archs = [a.replace("+PTX", "").replace(".", "") for a in archs if a.endswith("+PTX")]
    assert ptx_archs, f"no +PTX arch in the build: {_build_info.BUILT}"
    assert all(f"sm_{a}" in ptx for a in ptx_archs), ptx


@pytest.mark.gpu
def test_cuda_graphs_capture_on_the_models_device():
    """Fault: capture set no device guard and gave no capture stream: on cuda:1 it captured on
    cuda:0. Runs where a second GPU is present."""
    from iared_edge import Runtime

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    torch.manual_seed(0)
    model = IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1)).eval()
    frame = torch.randint(0, 255, (120, 160, 3), dtype=torch.uint8).numpy()
    graphs = Runtime(model, device="cuda:1", policy="level", level=0.5)
    eager = Runtime(model, device="cuda:1", policy="level", level=0.5, cuda_graphs=False)
    assert graphs._backend.name == "cuda_graphs" and graphs._backend.static_in.device == torch.device("cuda:1")
    a, b = graphs(frame), eager(frame)
    assert a.labels == b.labels and (a.stage_masks == b.stage_masks).all()


def test_the_gpu_check_script_parses_and_its_report_reads_summaries(tmp_path):
    import importlib.util
    import subprocess

    assert subprocess.run(["bash", "-n", "benchmarks/gpu_check.sh"]).returncode == 0
    spec = importlib.util.spec_from_file_location("gpu_report", "benchmarks/gpu_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    (tmp_path / "p.txt").write_text("....\n12 passed, 3 skipped in 4.0s\n")
    assert report.summary_line(str(tmp_path / "p.txt")) == "12 passed, 3 skipped in 4.0s"
    assert report.summary_line(str(tmp_path / "none.txt")) == "missing"


@pytest.mark.gpu
def test_runtime_eager_cuda_graphs_and_tensorrt_agree():
    """The same frames through the torch backend eagerly, through CUDA graphs and (where TensorRT
    imports) through TensorRT: fp32 with TF32 off gives the same kept patches and labels, fp16 the
    same labels within rounding."""
    import importlib.util

    from iared_edge import Runtime

    torch.manual_seed(0)
    model = IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1)).eval()
    frames = [torch.randint(0, 255, (120, 160, 3), dtype=torch.uint8).numpy() for _ in range(3)]
    kinds = {"eager": dict(cuda_graphs=False), "graphs": dict()}
    if importlib.util.find_spec("tensorrt") is not None:
        kinds["tensorrt"] = dict(backend="tensorrt", precision="fp32")
    answers = {}
    for name, kwargs in kinds.items():
        with Runtime(model, device="cuda", policy="level", level=0.5, **kwargs) as rt:
            answers[name] = [rt(f) for f in frames]
    for name, results in answers.items():
        for a, b in zip(results, answers["eager"]):
            assert a.labels[0] == b.labels[0], name
            assert (a.stage_masks == b.stage_masks).all(), name
            assert np.allclose(a.probs, b.probs, atol=1e-4), name
    with Runtime(model, device="cuda", policy="level", level=0.5, precision="fp16") as rt:
        for f, b in zip(frames, answers["eager"]):
            assert abs(rt(f).probs[0] - b.probs[0]) < 2e-2


@pytest.mark.gpu
def test_tensorrt_builds_and_runs_on_the_runtimes_device():
    """Fault: the TensorRT backend built and ran on the current device, not the Runtime's."""
    pytest.importorskip("tensorrt")
    from iared_edge import Runtime

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    torch.manual_seed(0)
    model = IARedViT.from_timm("deit_tiny_patch16_224", depth=3, groups=(1, 1, 1)).eval()
    frame = torch.randint(0, 255, (120, 160, 3), dtype=torch.uint8).numpy()
    with (
        torch.cuda.device(0),
        Runtime(model, device="cuda:1", backend="tensorrt", policy="level", level=0.5, precision="fp32") as rt,
        Runtime(model, device="cpu", policy="level", level=0.5) as cpu,
    ):
        a, b = rt(frame), cpu(frame)
    assert a.labels[0] == b.labels[0] and (a.stage_masks == b.stage_masks).all()
