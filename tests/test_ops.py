"""The compiled ops against the pure-PyTorch reference (and the reference against float64 loops),
on random packed batches and on the edge cases."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iared_edge import ops
from iared_edge.ops import reference as ref

compiled = pytest.mark.skipif(ops.backend("cpu") != "cpu", reason="iared_edge._C not built")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_batch(lengths, C, H, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    offsets = torch.zeros(B + 1, dtype=torch.int32)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0) if B else offsets[1:]
    T = int(offsets[-1])
    # positions: class token then an increasing subset of a 196-patch grid, as after dropping
    positions = (
        torch.cat(
            [
                torch.cat(
                    [torch.zeros(1, dtype=torch.int64), torch.randperm(196, generator=g)[: n - 1].sort().values + 1]
                )
                for n in lengths
            ]
        ).int()
        if T
        else torch.zeros(0, dtype=torch.int32)
    )
    tokens = (torch.randn(T, C, generator=g) * 3 + torch.randn(T, 1, generator=g) * 2).to(dtype)
    vecs = torch.randn(B, H, C, generator=g) * C**-0.5
    biases = torch.randn(B, H, generator=g)
    return [t.to(device) for t in (tokens, offsets, positions, vecs, biases)]


batches = st.tuples(
    st.lists(st.integers(1, 197), min_size=1, max_size=9),
    st.integers(1, 80),
    st.integers(1, 16),
    st.sampled_from(DTYPES),
    st.integers(0, 2**16),
)


@compiled
@settings(max_examples=60, deadline=None)
@given(batches, st.floats(0.2, 0.8))
def test_scores_match_reference(batch, threshold):
    lengths, C, H, dtype, seed = batch
    tokens, offsets, positions, vecs, biases = make_batch(lengths, C, H, dtype, seed)
    p, k = ops.interpreter_scores(tokens, offsets, vecs, biases, threshold, positions)
    # against the reference in float64: for a row of nearly equal values (C = 2, say) the float32
    # composition itself is off by ~1e-5, while the fused kernel (shifted sums) stays within 1e-7
    pr, kr = ref.interpreter_scores(tokens.double(), offsets, vecs.double(), biases.double(), threshold, positions)
    assert torch.allclose(p.double(), pr, atol=2e-6, rtol=1e-5)
    near = (pr - threshold).abs() < 1e-5  # a decision on the threshold's edge may flip
    assert torch.equal(k[~near], kr[~near])
    assert k[positions == 0].all()


@compiled
@settings(max_examples=60, deadline=None)
@given(batches, st.floats(0.0, 1.0), st.booleans())
def test_topk_and_compact_match_reference(batch, level, ties):
    lengths, C, H, dtype, seed = batch
    tokens, offsets, positions, _, _ = make_batch(lengths, C, H, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    scores = torch.rand(tokens.shape[0], generator=g)
    if ties:
        scores = (scores * 4).round() / 4
    keep = ops.topk_keep(scores, offsets, positions, level)
    assert torch.equal(keep, ref.topk_keep(scores, offsets, positions, level))
    random_keep = torch.rand(tokens.shape[0], generator=g) < 0.5
    for flags in (keep, random_keep):
        out = ops.compact(tokens, offsets, positions, flags)
        expect = ref.compact(tokens, offsets, positions, flags)
        for a, b in zip(out, expect):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert out[0].is_contiguous()


@pytest.mark.parametrize("force_reference", [False, True])
def test_compact_into_a_reused_buffer(force_reference):
    tokens, offsets, positions, _, _ = make_batch([9, 4, 12], 10, 1, torch.float32, 5)
    keep = torch.rand(25, generator=torch.Generator().manual_seed(2)) < 0.5
    buf = torch.full((25, 10), float("nan"))
    ops.use_reference(force_reference)
    try:
        toks, offs, pos = ops.compact(tokens, offsets, positions, keep, out=buf)
        with pytest.raises((ValueError, RuntimeError), match="out"):
            ops.compact(tokens, offsets, positions, torch.ones(25, dtype=torch.bool), out=buf[:3])
    finally:
        ops.use_reference(False)
    expect = ref.compact(tokens, offsets, positions, keep)
    assert toks.data_ptr() == buf.data_ptr() and torch.equal(toks, expect[0])
    assert torch.equal(offs, expect[1]) and torch.equal(pos, expect[2])
    with pytest.raises(ValueError, match="out must be"):
        ops.compact(tokens, offsets, positions, keep, out=buf.double())


def test_reference_scores_match_float64_loop():
    tokens, offsets, positions, vecs, biases = make_batch([5, 1, 9], 24, 3, torch.float32, 7)
    probs, _ = ref.interpreter_scores(tokens, offsets, vecs, biases)
    for b in range(3):
        for t in range(int(offsets[b]), int(offsets[b + 1])):
            x = tokens[t].double()
            xn = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-6)
            p = sum(torch.sigmoid(vecs[b, h].double() @ xn + biases[b, h]) for h in range(3)) / 3
            assert abs(probs[t].item() - p.item()) < 1e-6


def test_reference_topk_and_compact_match_naive_loop():
    tokens, offsets, positions, _, _ = make_batch([6, 1, 8], 5, 1, torch.float32, 3)
    scores = torch.tensor([0.1, 0.9, 0.3, 0.3, 0.8, 0.2, 0.5, 0.7, 0.7, 0.1, 0.6, 0.6, 0.6, 0.0, 0.4])
    keep = ref.topk_keep(scores, offsets, positions, 0.5)
    # image 0: class .1, patches .9 .3 .3 .8 .2 -> k=ceil(2.5)=3: .9, .8, the first .3
    # image 1: class only; image 2: class .7, patches .7 .1 .6 .6 .6 .0 .4 -> k=4: .7, .6, .6, .6
    assert keep.tolist() == [1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0]
    toks, offs, pos = ref.compact(tokens, offsets, positions, keep)
    rows = [t for t in range(15) if keep[t]]
    assert torch.equal(toks, tokens[rows]) and pos.tolist() == positions[rows].tolist()
    assert offs.tolist() == [0, 4, 5, 10]


@compiled
def test_topk_with_a_nan_score_counts_ranks_as_the_gpu_does():
    """The CPU selects each sequence's top k by partial sorting; a NaN score has no place in that
    order, so a sequence holding one is rank-counted like on the GPU (a token is kept when fewer
    than k patch tokens come before it: higher score, or equal and earlier). Checked against that
    count as a naive loop; the sequence without a NaN in the same batch is selected as usual."""
    _, offsets, positions, _, _ = make_batch([9, 7], 4, 1, torch.float32, 5)
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(16, generator=g)
    scores[3] = float("nan")
    keep = ops.topk_keep(scores, offsets, positions, 0.5)
    expect = []
    for s, e in [(0, 9), (9, 16)]:
        patches = [t for t in range(s, e) if positions[t] >= 1]
        k = math.ceil(0.5 * len(patches))
        for t in range(s, e):
            if positions[t] < 1:
                expect.append(True)
                continue
            st = scores[t].item()
            rank = sum(1 for j in patches if j != t and (scores[j].item() > st or (scores[j].item() == st and j < t)))
            expect.append(rank < k)
    assert keep.tolist() == expect
    assert keep[3]  # nothing comes before a NaN
    assert torch.equal(keep[9:], ref.topk_keep(scores[9:], offsets[1:] - 9, positions[9:], 0.5))


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_cases(dtype):
    # empty batch
    tokens, offsets, positions, vecs, biases = make_batch([], 8, 2, dtype)
    p, k = ops.interpreter_scores(tokens, offsets, vecs, biases, 0.5, positions)
    assert p.shape == (0,) and k.shape == (0,)
    out = ops.compact(tokens, offsets, positions, k)
    assert out[0].shape == (0, 8) and out[1].tolist() == [0]
    # B = 1, an image keeping only its class token, C not a multiple of the vector width
    tokens, offsets, positions, vecs, biases = make_batch([7], 13, 3, dtype)
    none = torch.zeros(7, dtype=torch.bool)
    toks, offs, pos = ops.compact(tokens, offsets, positions, none)
    assert offs.tolist() == [0, 1] and pos.tolist() == [0] and torch.equal(toks, tokens[:1])
    assert ops.topk_keep(torch.rand(7), offsets, positions, 0.0).tolist() == [True] + [False] * 6
    # empty sequences inside a batch
    offsets = torch.tensor([0, 0, 7, 7], dtype=torch.int32)
    vecs, biases = torch.randn(3, 3, 13), torch.randn(3, 3)
    p, _ = ops.interpreter_scores(tokens, offsets, vecs, biases)
    pr, _ = ref.interpreter_scores(tokens, offsets, vecs, biases)
    assert torch.allclose(p, pr, atol=2e-6)
    toks, offs, _ = ops.compact(tokens, offsets, positions, torch.ones(7, dtype=torch.bool))
    assert offs.tolist() == [0, 0, 7, 7] and torch.equal(toks, tokens)


@compiled
def test_millions_of_tokens():
    T, C, B = 2_000_000, 4, 4
    offsets = torch.tensor([0, 1, T // 2, T - 5, T], dtype=torch.int32)
    positions = torch.cat([torch.arange(int(offsets[b + 1] - offsets[b])) for b in range(B)]).int()
    tokens = torch.randn(T, C)
    keep = torch.rand(T) < 0.3
    out = ops.compact(tokens, offsets, positions, keep)
    expect = ref.compact(tokens, offsets, positions, keep)
    assert all(torch.equal(a, b) for a, b in zip(out, expect))
    vecs, biases = torch.randn(B, 2, C), torch.randn(B, 2)
    p, _ = ops.interpreter_scores(tokens, offsets, vecs, biases)
    pr, _ = ref.interpreter_scores(tokens, offsets, vecs, biases)
    assert torch.allclose(p, pr, atol=2e-6)


@compiled
def test_ops_are_registered_with_torch():
    tokens, offsets, positions, vecs, biases = make_batch([4, 3], 6, 2, torch.float32)
    p, k = torch.ops.iared.interpreter_scores(tokens, offsets, positions, vecs, biases, 0.5, 1, 1e-6, True)
    assert torch.allclose(p, ref.interpreter_scores(tokens, offsets, vecs, biases)[0], atol=1e-6)


@compiled
def test_eager_calls_skip_the_dispatcher_and_traces_still_record_the_ops(monkeypatch):
    tokens, offsets, positions, vecs, biases = make_batch([5, 3], 8, 2, torch.float32)
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    want = ref.compact(tokens, offsets, positions, keep)

    def f(tokens, keep):
        return ops.compact(tokens, offsets, positions, keep)[0]

    # jit tracing (as the legacy ONNX export does) must record the registered op, not bake this
    # call's result into the graph as a constant
    traced = torch.jit.trace(f, (tokens, keep), check_trace=False)
    assert "iared::compact" in str(traced.graph)
    other = ~keep
    assert torch.equal(traced(tokens, other), ref.compact(tokens, offsets, positions, other)[0])

    def boxed(*args):
        raise AssertionError("an eager call went through the dispatcher")

    for name in ("_compact_op", "_scores_op", "_topk_op"):
        monkeypatch.setattr(ops, name, boxed)
    for got, w in zip(ops.compact(tokens, offsets, positions, keep), want):
        assert torch.equal(got, w)
    probs, flags = ops.interpreter_scores(tokens, offsets, vecs, biases, 0.5, positions)
    assert torch.allclose(probs, ref.interpreter_scores(tokens, offsets, vecs, biases)[0], atol=1e-6)
    assert torch.equal(ops.topk_keep(probs, offsets, positions, 0.5), ref.topk_keep(probs, offsets, positions, 0.5))


def _fold_args(B, C, H, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(B, C, generator=g) * 2 + torch.randn(B, 1, generator=g)
    wq, wk = (torch.randn(H * D, C, generator=g) * C**-0.5 for _ in range(2))
    bq, bk = (torch.randn(H * D, generator=g) for _ in range(2))
    return cls, wq, bq, wk, bk


def _fold_float64_loop(cls, wq, bq, wk, bk, H, eps):
    """The fold straight from its definition, one image and one head at a time, in float64."""
    cls, wq, bq, wk, bk = (t.double() for t in (cls, wq, bq, wk, bk))
    B, C = cls.shape
    D = wq.shape[0] // H
    vecs, biases = torch.zeros(B, H, C, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    for b in range(B):
        x = cls[b]
        ln = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps)
        q = wq @ ln + bq
        for h in range(H):
            rows = slice(h * D, (h + 1) * D)
            vecs[b, h] = q[rows] @ wk[rows]
            biases[b, h] = q[rows] @ bk[rows]
    return vecs, biases


@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 130), st.integers(1, 16), st.integers(1, 24), st.integers(0, 2**16))
def test_fold_matches_a_float64_loop(threads, B, C, H, D, seed):
    """Any batch, width and head count: column splits that are not multiples of 16, more threads
    than columns, one head; the compiled kernel (when built) and the reference alike."""
    args = _fold_args(B, C, H, D, seed)
    want = _fold_float64_loop(*args, H, 1e-6)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for force_reference in (False, True):
            ops.use_reference(force_reference)
            vecs, biases = ops.interpreter_fold(*args, H, 1e-6)
            assert vecs.shape == (B, H, C) and biases.shape == (B, H)
            assert vecs.dtype == biases.dtype == torch.float32
            scale = 1 + want[0].abs().max().item()
            assert (vecs.double() - want[0]).abs().max().item() <= 1e-5 * scale
            assert (biases.double() - want[1]).abs().max().item() <= 1e-5 * (1 + want[1].abs().max().item())
    finally:
        ops.use_reference(False)
        torch.set_num_threads(before)


@compiled
def test_fold_runs_compiled_on_the_cpu_and_traces_as_an_op(monkeypatch):
    args = _fold_args(2, 48, 3, 16)
    monkeypatch.setattr(ops.reference, "interpreter_fold", None)  # the CPU call must not fall back
    vecs, _ = ops.interpreter_fold(*args, 3, 1e-6)
    want = _fold_float64_loop(*args, 3, 1e-6)[0]
    assert torch.allclose(vecs.double(), want, atol=1e-5)
    traced = torch.jit.trace(lambda c: ops.interpreter_fold(c, *args[1:], 3, 1e-6)[0], (args[0],), check_trace=False)
    assert "iared::interpreter_fold" in str(traced.graph)


def test_fold_on_fake_cuda_tensors_takes_the_reference():
    """On a GPU the fold is the reference's two matmuls (no CUDA kernel): shapes and placement under
    FakeTensorMode with device cuda."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    shapes = [t.shape for t in _fold_args(2, 32, 4, 8)]
    with FakeTensorMode():
        args = [torch.empty(shape, device="cuda") for shape in shapes]
        vecs, biases = ops.interpreter_fold(*args, 4, 1e-6)
    assert vecs.shape == (2, 4, 32) and biases.shape == (2, 4)
    assert vecs.device.type == biases.device.type == "cuda"


@compiled
@settings(max_examples=60, deadline=None)
@given(batches, st.floats(0.0, 1.0), st.booleans())
def test_select_stage_in_one_call_equals_the_four_ops(batch, value, by_level):
    """The CPU's one-call stage (class tokens gathered, fold, score, keep, compact) gives exactly
    what the four compiled ops give one after the other, for every dtype, level and threshold."""
    lengths, C, H, dtype, seed = batch
    tokens, offsets, positions, _, _ = make_batch(lengths, C, H, dtype, seed)
    D = 1 + seed % 7
    _, wq, bq, wk, bk = _fold_args(1, C, H, D, seed)
    kw = dict(level=value) if by_level else dict(threshold=value)
    got = ops.select_stage(tokens, offsets, positions, (wq, bq, wk, bk), H, 1e-6, **kw, num_prefix=1)
    w = (wq, bq, wk, bk)
    want = ops._select_stage_ops(tokens, offsets, positions, w, H, 1e-6, kw.get("level"), kw.get("threshold"), 1, None)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
    # and the keep decisions are the reference's, from the same probabilities
    keep = ref.topk_keep(want[0], offsets, positions, value) if by_level else (want[0] > value) | (positions < 1)
    for g, w in zip(got[1:], ref.compact(tokens, offsets, positions, keep)):
        assert torch.equal(g, w)


@compiled
def test_select_stage_with_an_empty_image_and_its_errors():
    tokens, offsets, positions, _, _ = make_batch([3, 4], 8, 2, torch.float32)
    offsets = torch.tensor([0, 3, 3, 7], dtype=torch.int32)  # image 1 has no rows
    _, wq, bq, wk, bk = _fold_args(1, 8, 2, 4)
    w = (wq, bq, wk, bk)
    probs, out, new_offsets, _ = ops.select_stage(tokens, offsets, positions, w, 2, level=0.5)
    assert probs.shape == (7,) and new_offsets[1] == new_offsets[2]
    with pytest.raises(ValueError, match="one of level= or threshold="):
        ops.select_stage(tokens, offsets, positions, w, 2)
    with pytest.raises(ValueError, match="level must be in"):
        ops.select_stage(tokens, offsets, positions, w, 2, level=1.5)
    with pytest.raises(ValueError, match="wq must be"):
        ops.select_stage(tokens, offsets, positions, (wq[:, :4], bq, wk, bk), 2, level=0.5)
    with pytest.raises(ValueError, match="positions must be int32"):
        ops.select_stage(tokens, offsets, positions.long(), w, 2, threshold=0.5)
    with pytest.raises(ValueError, match="level must be in"):  # not read as "a threshold"
        ops.select_stage(tokens, offsets, positions, w, 2, level=-0.2)
    empty = torch.empty(2, 0), torch.zeros(3), torch.empty(3, 0), torch.zeros(3)
    with pytest.raises(ValueError, match="no channels"):
        ops.select_stage(torch.empty(2, 0), torch.tensor([0, 2], dtype=torch.int32), positions[:2], empty, 3, level=0.5)


def test_fold_bad_inputs_get_clear_errors():
    cls, wq, bq, wk, bk = _fold_args(2, 12, 3, 4)
    with pytest.raises(ValueError, match="cls must be"):
        ops.interpreter_fold(cls[0], wq, bq, wk, bk, 3)
    with pytest.raises(ValueError, match="wq must be"):
        ops.interpreter_fold(cls, wq, bq, wk, bk, 5)
    with pytest.raises(ValueError, match="wk must be"):
        ops.interpreter_fold(cls, wq, bq, wk[:6], bk, 3)
    with pytest.raises(ValueError, match="bq, bk"):
        ops.interpreter_fold(cls, wq, bq[:3], wk, bk, 3)
    with pytest.raises(ValueError, match="cls must be contiguous float32"):
        ops.interpreter_fold(cls.half(), wq, bq, wk, bk, 3)
    with pytest.raises(ValueError, match="wk must be contiguous float32"):
        ops.interpreter_fold(cls, wq, bq, wk.t().contiguous().t(), bk, 3)


def test_bad_inputs_get_clear_errors():
    tokens, offsets, positions, vecs, biases = make_batch([4, 3], 6, 2, torch.float32)
    keep = torch.ones(7, dtype=torch.bool)
    with pytest.raises(ValueError, match="contiguous"):
        ops.compact(tokens.t().contiguous().t(), offsets, positions, keep)
    with pytest.raises(TypeError, match="float64"):
        ops.compact(tokens.double(), offsets, positions, keep)
    with pytest.raises(ValueError, match="int32"):
        ops.compact(tokens, offsets.long(), positions, keep)
    with pytest.raises(ValueError, match="keep must be bool"):
        ops.compact(tokens, offsets, positions, keep.int())
    with pytest.raises(ValueError, match="vecs must be"):
        ops.interpreter_scores(tokens, offsets, vecs[:1], biases)
    with pytest.raises(ValueError, match="vecs must be contiguous float32"):
        ops.interpreter_scores(tokens, offsets, vecs.half(), biases)
    with pytest.raises(ValueError, match="level"):
        ops.topk_keep(torch.rand(7), offsets, positions, 1.5)
    with pytest.raises(ValueError, match="on meta"):
        ops.compact(tokens, offsets.to("meta"), positions, keep)
    # offsets that would index past the rows: refused before any kernel reads them
    for bad in ([0, 4, 8], [1, 4, 7], [0, 5, 4, 7]):
        bad = torch.tensor(bad, dtype=torch.int32)
        with pytest.raises(ValueError, match="offsets must start at 0"):
            ops.compact(tokens, bad, positions, keep)
        with pytest.raises(ValueError, match="offsets must start at 0"):
            ops.topk_keep(torch.rand(7), bad, positions, 0.5)


def test_bad_inputs_get_clear_errors_on_the_reference_ops_too():
    ops.use_reference(True)
    try:
        test_bad_inputs_get_clear_errors()
    finally:
        ops.use_reference(False)


def test_non_contiguous_keep_flags_are_accepted():
    tokens, offsets, positions, _, _ = make_batch([4, 3], 6, 2, torch.float32)
    keep = torch.rand(7, 2) < 0.5
    got = ops.compact(tokens, offsets, positions, keep[:, 0])
    want = ref.compact(tokens, offsets, positions, keep[:, 0].contiguous())
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@compiled
def test_compiled_ops_check_inputs_too():
    tokens, offsets, positions, vecs, biases = make_batch([4, 3], 6, 2, torch.float32)
    with pytest.raises(RuntimeError, match="heads supported"):
        torch.ops.iared.interpreter_scores(
            tokens, offsets, positions, torch.zeros(2, 17, 6), torch.zeros(2, 17), 0.5, 1, 1e-6, False
        )
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.iared.compact(tokens.t().contiguous().t(), offsets, positions, torch.ones(7, dtype=torch.bool), 1)


def test_backend_reports_and_reference_switch():
    assert ops.backend("cpu") in ("cpu", "torch")
    ops.use_reference(True)
    try:
        assert ops.backend("cpu") == "torch"
    finally:
        ops.use_reference(False)


def cuda(test):
    """A GPU test of the compiled CUDA ops: marker gpu, and skipped where the extension has no CUDA."""
    needs_build = pytest.mark.skipif(
        torch.cuda.is_available() and ops.backend("cuda") != "cuda", reason="needs the CUDA build of iared_edge._C"
    )
    return pytest.mark.gpu(needs_build(test))


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ops_match_cpu(dtype):
    lengths = [197, 1, 50, 120, 197, 3]
    cpu = make_batch(lengths, 384, 6, dtype, 11)
    gpu = [t.cuda() for t in cpu]
    p, k = ops.interpreter_scores(*gpu[:2], *gpu[3:], 0.5, gpu[2])
    pc, kc = ops.interpreter_scores(*cpu[:2], *cpu[3:], 0.5, cpu[2])
    assert torch.allclose(p.cpu(), pc, atol=2e-6)
    keep = ops.topk_keep(pc.cuda(), gpu[1], gpu[2], 0.6)
    assert torch.equal(keep.cpu(), ops.topk_keep(pc, cpu[1], cpu[2], 0.6))
    out = ops.compact(gpu[0], gpu[1], gpu[2], keep)
    expect = ops.compact(cpu[0], cpu[1], cpu[2], keep.cpu())
    assert all(torch.equal(a.cpu(), b) for a, b in zip(out, expect))


@cuda
def test_cuda_model_packed_equals_masked():
    from iared_edge import IARedViT

    model = IARedViT.from_timm("deit_tiny_patch16_224").cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        p, m = model(x), model(x, execution="masked")
    assert torch.equal(p.keep_masks, m.keep_masks)
    assert torch.allclose(p.logits, m.logits, atol=1e-4)


def _any_batch(lengths, C, H, dtype, seed, device):
    """make_batch, but images may have no rows at all (length 0)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    parts = [torch.cat([torch.zeros(1, dtype=torch.int64), torch.randperm(196, generator=g) + 1])[:n] for n in lengths]
    positions = torch.cat([p.sort().values for p in parts]).int()
    T = int(offsets[-1])
    tokens = (torch.randn(T, C, generator=g) * 3 + torch.randn(T, 1, generator=g) * 2).to(dtype)
    vecs = torch.randn(len(lengths), H, C, generator=g) * C**-0.5
    biases = torch.randn(len(lengths), H, generator=g)
    cpu = (tokens, offsets, positions, vecs, biases)
    return cpu, [t.to(device) for t in cpu]


def _three_ops(tokens, offsets, positions, vecs, biases, threshold, level, out=None):
    probs, keep = ops.interpreter_scores(tokens, offsets, vecs, biases, threshold, positions)
    top = ops.topk_keep(probs, offsets, positions, level)
    return (probs, keep, top, *ops.compact(tokens, offsets, positions, keep, out=out))


def _assert_same(cuda_out, cpu_out):
    probs, keep, top, t, o, p = (x.cpu() for x in cuda_out)
    rprobs, rkeep, rtop, rt, ro, rp = cpu_out
    assert torch.allclose(probs, rprobs, atol=1e-5)
    near = (rprobs - 0.5).abs() < 1e-5  # a decision on the threshold's edge may flip
    assert torch.equal(keep[~near], rkeep[~near])
    if not near.any():
        assert torch.equal(top, rtop) and torch.equal(o, ro) and torch.equal(p, rp) and torch.equal(t, rt)


@cuda
@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 197), min_size=1, max_size=9),
    st.integers(1, 80),
    st.integers(1, 16),
    st.sampled_from(DTYPES),
    st.integers(0, 2**16),
    st.floats(0.0, 1.0),
)
def test_cuda_ops_match_the_cpu_ops_on_any_batch(lengths, C, H, dtype, seed, level):
    """Every op on CUDA against the CPU kernels (themselves tested against the reference): images
    of 0 to 197 rows, row sizes 1 to 80 (odd sizes reach copy_row's narrow paths), 3 dtypes."""
    cpu, dev = _any_batch(lengths, C, H, dtype, seed, "cuda")
    _assert_same(_three_ops(*dev, 0.5, level), _three_ops(*cpu, 0.5, level))


@cuda
def test_cuda_compaction_scans_many_tiles_and_writes_a_misaligned_view():
    """T >= 50,000 rows (CUB's scan over many tiles), into an `out` view one element off the
    allocation's alignment, on a non-default stream; and on cuda:1 where there is one."""
    cpu, dev = _any_batch([197] * 300, 40, 3, torch.float16, 7, "cuda")
    T, C = cpu[0].shape
    assert T >= 50_000
    want = _three_ops(*cpu, 0.5, 0.5)
    flat = torch.empty(T * C + 1, dtype=torch.float16, device="cuda")
    out = flat[1:].view(T, C)  # contiguous, but 2 bytes past the allocation's alignment
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _three_ops(*dev, 0.5, 0.5, out=out)
    side.synchronize()
    _assert_same(got, want)
    if torch.cuda.device_count() > 1:
        _, dev1 = _any_batch([197] * 30, 40, 3, torch.float32, 8, "cuda:1")
        cpu1, _ = _any_batch([197] * 30, 40, 3, torch.float32, 8, "cpu")
        got1 = _three_ops(*dev1, 0.5, 0.5)
        assert all(t.device == torch.device("cuda:1") for t in got1)
        _assert_same(got1, _three_ops(*cpu1, 0.5, 0.5))
