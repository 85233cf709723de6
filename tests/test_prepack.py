"""oneDNN-prepacked CPU linears (iared_edge.prepack): the same answers as F.linear, used only
where they can serve, made again when the weights change, and set up by the Runtime on a CPU."""

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from iared_edge import prepack
from iared_edge.prepack import PrepackedForward, is_prepacked, prepack_linears, unprepack_linears

pytestmark = pytest.mark.skipif(not prepack.available(), reason="this torch has no oneDNN packed linear")


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def packed_calls(fn) -> int:
    with OpNames() as ops:
        fn()
    return sum("_linear_pointwise" in n for n in ops.names)


def test_linear_matches_float64_and_uses_the_packed_weight_only_at_few_rows():
    lin = nn.Linear(48, 80)
    ref = copy.deepcopy(lin).double()
    assert prepack_linears(lin, max_rows=16) == 1
    for shape, packed in [((3, 48), True), ((2, 5, 48), True), ((17, 48), False), ((0, 48), False)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            n = packed_calls(lambda x=x: lin(x))
            y = lin(x)
        assert n == (1 if packed else 0), shape
        assert y.shape == (*shape[:-1], 80)
        torch.testing.assert_close(y.double(), ref(x.double()), atol=1e-5, rtol=1e-5)
    x = torch.randn(32, 48)[:, ::2].repeat(1, 2)  # a non-contiguous-made input
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


def test_gradients_autocast_and_other_dtypes_take_the_plain_linear():
    lin = nn.Linear(16, 8)
    plain = copy.deepcopy(lin)
    prepack_linears(lin)
    x = torch.randn(4, 16)
    assert packed_calls(lambda: lin(x)) == 0  # grad enabled and the weight requires grad
    lin(x).sum().backward()
    plain(x).sum().backward()
    torch.testing.assert_close(lin.weight.grad, plain.weight.grad)
    with torch.no_grad():
        assert packed_calls(lambda: lin(x.double().float())) == 1
        assert packed_calls(lambda: lin.double()(x.double())) == 0
        lin.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert packed_calls(lambda: lin(x)) == 0


def test_a_changed_weight_is_packed_again():
    lin = nn.Linear(16, 8)
    prepack_linears(lin)
    x = torch.randn(2, 16)
    with torch.no_grad():
        lin(x)
        lin.weight.mul_(2.0)  # in place: a new version
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        lin.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.randn(8)})
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        lin.weight = nn.Parameter(torch.randn(8, 16))  # a new tensor
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


def test_model_answers_state_dict_copies_and_undo(tiny, images):
    model = copy.deepcopy(tiny)
    keys = list(model.state_dict())
    n = prepack_linears(model.vit)
    assert n == sum(type(m) is nn.Linear for m in model.vit.modules()) > 0
    assert list(model.state_dict()) == keys and is_prepacked(model)
    x = images[:1]
    with torch.inference_mode():
        for level in (1.0, 0.5, 0.1):
            a = tiny(x, policy="level", level=level)
            b = model(x, policy="level", level=level)
            assert packed_calls(lambda level=level: model(x, policy="level", level=level)) > 0
            torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
            assert torch.equal(b.kept_counts, a.kept_counts)
    twin = copy.deepcopy(model)  # the packed (opaque) weight is not copied; the patch is
    assert is_prepacked(twin)
    fwd = twin.vit.head.__dict__["forward"]
    assert isinstance(fwd, PrepackedForward) and fwd.linear is twin.vit.head
    buf = io.BytesIO()
    torch.save(model, buf)  # pickles (the opaque packed weight would not)
    with torch.inference_mode():
        torch.testing.assert_close(twin(x, policy="all").logits, tiny(x, policy="all").logits, atol=1e-4, rtol=1e-4)
    assert unprepack_linears(model.vit) == n and not is_prepacked(model)
    with torch.inference_mode():
        assert packed_calls(lambda: model(x, policy="level", level=0.5)) == 0


def test_onnx_export_of_a_prepacked_model_traces_the_plain_linear(tiny, tmp_path):
    from iared_edge.export.onnx import export_onnx

    model = copy.deepcopy(tiny)
    prepack_linears(model.vit)
    path = str(tmp_path / "m.onnx")
    export_onnx(model, path, level=0.5)
    import onnx

    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "MatMul" in ops or "Gemm" in ops
    assert not any("mkldnn" in o.lower() or "linear_pointwise" in o.lower() for o in ops)


def test_bad_max_rows_is_refused():
    with pytest.raises(ValueError, match="max_rows"):
        prepack_linears(nn.Linear(2, 2), max_rows=0)


def test_runtime_prepacks_only_during_its_calls_and_not_when_told_not_to(tiny, images):
    from iared_edge import Runtime
    from iared_edge.prepack import PrepackedLinears

    frame = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    model = copy.deepcopy(tiny)
    with Runtime(model, device="cpu", policy="level", level=0.5) as rt:
        assert rt.model is model
        assert isinstance(rt._backend.prepacked, PrepackedLinears) and rt._backend.prepacked.forwards
        with OpNames() as ops:
            got = rt(frame)
        assert any("_linear_pointwise" in n for n in ops.names)
        assert not is_prepacked(model)  # the caller's model is as it was outside the Runtime's calls
    with Runtime(copy.deepcopy(tiny), device="cpu", policy="level", level=0.5, prepack=False) as rt:
        assert rt._backend.prepacked is None
        with OpNames() as ops:
            want = rt(frame)
        assert not any("_linear_pointwise" in n for n in ops.names)
    assert got.label == want.label
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)


def test_scoped_prepacking_leaves_linears_as_they_were(tiny, images):
    from iared_edge.prepack import PrepackedLinears

    model = copy.deepcopy(tiny)
    scoped = PrepackedLinears(model.vit)
    x = images[:1]
    with torch.inference_mode():
        with scoped:
            assert is_prepacked(model)
            assert packed_calls(lambda: model(x, policy="level", level=0.5)) > 0
        assert not is_prepacked(model)
        assert packed_calls(lambda: model(x, policy="level", level=0.5)) == 0
    prepack_linears(model.vit.head)  # a Linear patched for good stays so
    assert len(PrepackedLinears(model.vit).forwards) == len(scoped.forwards) - 1
