"""The TensorRT backend without a GPU: a stand-in `tensorrt` module (versions 10.3.0 and 11.4.0)
records what each major version's build path asks of the builder; the version gate, the buffer
rules and the engine cache key are pure functions; the float16 graph TensorRT 11 builds from is
checked with onnxruntime on the CPU. One test, marked gpu, builds real engines."""

from __future__ import annotations

import copy
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from iared_edge.export import tensorrt_backend as tb

# -- a stand-in tensorrt module --------------------------------------------------------------------


class _Named:
    """An enum member: hashable, compared by identity, printed as TensorRT prints its own."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name

    def __repr__(self):
        return f"{self.kind}.{self.name}"


class _Tensor:
    def __init__(self, name, dtype, is_shape_tensor=False):
        self.name, self.dtype, self.is_shape_tensor = name, dtype, is_shape_tensor


class _Network:
    def __init__(self, flags):
        self.flags, self.inputs = flags, []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class _Config:
    def __init__(self):
        self.set, self.cleared, self.profiles = [], [], []

    def set_flag(self, flag):
        self.set.append(flag)

    def clear_flag(self, flag):
        self.cleared.append(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _Profile:
    def __init__(self):
        self.shapes, self.shape_inputs = {}, {}

    def set_shape(self, name, mn, opt, mx):
        self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    def set_shape_input(self, name, mn, opt, mx):
        self.shape_inputs[name] = (list(mn), list(opt), list(mx))


def fake_trt(version: str, inputs=None, parse_ok=True, plan=b"plan"):
    """A `tensorrt` stand-in of `version`. Its parser gives the network the ONNX graph's inputs (read
    with onnx: float -> float32, float16, int64; keep_counts a shape tensor, as TopK's K makes it),
    or `inputs` [(name, dtype name, is_shape_tensor)] when given. TensorRT 11's BuilderFlag has no
    FP16 (removed in 11.0), so a path that touched it would raise AttributeError. What the build
    did is left in `trt.built` (builder, network, config)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    dt = {n: _Named("DataType", n) for n in ("FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "BF16")}
    trt.DataType = types.SimpleNamespace(**dt)
    trt.float32, trt.float16, trt.int8 = dt["FLOAT"], dt["HALF"], dt["INT8"]
    trt.int32, trt.int64, trt.bool, trt.bfloat16 = dt["INT32"], dt["INT64"], dt["BOOL"], dt["BF16"]
    flags = ["DEBUG", "TF32", "REFIT", "SPARSE_WEIGHTS"] + (["FP16", "INT8", "BF16"] if major < 11 else [])
    trt.BuilderFlag = types.SimpleNamespace(**{f: _Named("BuilderFlag", f) for f in flags})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=_Named("Flag", "STRONGLY_TYPED"))
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Named("TensorIOMode", "INPUT"), OUTPUT=_Named("IO", "OUTPUT"))
    trt.TensorLocation = types.SimpleNamespace(HOST=_Named("TensorLocation", "HOST"), DEVICE=_Named("Loc", "DEVICE"))
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    onnx_types = {1: trt.float32, 10: trt.float16, 7: trt.int64, 6: trt.int32}
    trt.built = types.SimpleNamespace()

    class Builder:
        def __init__(self, logger):
            trt.built.builder = self

        def create_network(self, flags=0):
            trt.built.network = _Network(flags)
            return trt.built.network

        def create_builder_config(self):
            trt.built.config = _Config()
            return trt.built.config

        def create_optimization_profile(self):
            return _Profile()

        def build_serialized_network(self, network, config):
            return plan

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            self.network = network

        def get_error(self, i):
            return "In node 3 (TopK): unsupported"

        def parse(self, data):
            if not parse_ok:
                return False
            if inputs is not None:
                self.network.inputs = [_Tensor(n, getattr(trt, d), s) for n, d, s in inputs]
            else:
                graph = onnx.load_from_string(data).graph
                self.network.inputs = [
                    _Tensor(i.name, onnx_types[i.type.tensor_type.elem_type], i.name == "keep_counts")
                    for i in graph.input
                ]
            return True

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


IMAGES32 = [("images", "float32", False)]
IMAGES16 = [("images", "float16", False)]
COUNTS = [("keep_counts", "int64", True)]


def _build(trt, fp16, counts=False, source="g.onnx"):
    major = tb.check_trt_version(trt.__version__)
    return tb.build_serialized_engine(
        trt,
        None,
        b"graph",
        major,
        fp16,
        (3, 224, 224),
        8,
        keep_counts_shape=(3, 196) if counts else None,
        source=source,
    )


# -- the version gate ------------------------------------------------------------------------------


@pytest.mark.parametrize("version, major", [("10.3.0", 10), ("10.16.1.11", 10), ("11.4.0", 11), ("11.0.0.5", 11)])
def test_version_gate_accepts_tensorrt_10_and_11(version, major):
    assert tb.check_trt_version(version) == major


@pytest.mark.parametrize("version", ["8.5.2.2", "8.6.1", "9.3.0.1"])
def test_version_gate_refuses_8_and_9_naming_the_version_and_why(version):
    with pytest.raises(ImportError) as err:
        tb.check_trt_version(version)
    msg = str(err.value)
    assert version in msg and "TensorRT 10 or 11" in msg
    # the exact reasons: not the tensor API (8.5 has it), but int64, explicit batch, TopK's K
    assert "8.5" in msg and "execute_async_v3" in msg
    assert "int64" in msg and "EXPLICIT_BATCH" in msg and "TopK" in msg
    assert 'backend="onnxruntime"' in msg


def test_version_gate_refuses_a_major_it_has_no_build_path_for():
    with pytest.raises(ImportError, match=r"12\.0\.0.*no build\s+path"):
        tb.check_trt_version("12.0.0")
    with pytest.raises(ImportError, match="not a version number"):
        tb.check_trt_version("dev")


def test_the_installed_module_goes_through_the_gate(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("8.6.1"))
    with pytest.raises(ImportError, match=r"found 8\.6\.1"):
        tb._import_trt()
    # the backend refuses it before it asks for a GPU
    with pytest.raises(ImportError, match=r"found 8\.6\.1"):
        tb.TensorRTBackend(object(), [1.0], device="cuda")
    for version, major in (("10.3.0", 10), ("11.4.0", 11)):
        monkeypatch.setitem(sys.modules, "tensorrt", fake_trt(version))
        trt, got = tb._import_trt()
        assert trt.__version__ == version and got == major
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    with pytest.raises(ImportError, match="pip install tensorrt"):
        tb._import_trt()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_an_accepted_version_still_needs_a_cuda_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("11.4.0"))
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        tb.TensorRTBackend(object(), [1.0], device="cuda")


# -- one build path per major version ----------------------------------------------------------------


def test_tensorrt_10_fp16_is_the_fp16_builder_flag_on_a_weakly_typed_float32_network():
    trt = fake_trt("10.3.0", inputs=IMAGES32)
    assert _build(trt, fp16=True) == b"plan"
    assert trt.built.network.flags == 0  # no STRONGLY_TYPED: weak typing, which FP16 needs
    assert trt.built.config.set == [trt.BuilderFlag.FP16] and trt.built.config.cleared == []
    assert not tb.graph_is_fp16(10, True)


def test_tensorrt_10_fp32_clears_tf32():
    trt = fake_trt("10.3.0", inputs=IMAGES32)
    _build(trt, fp16=False)
    assert trt.built.config.set == [] and trt.built.config.cleared == [trt.BuilderFlag.TF32]


def test_tensorrt_11_fp16_sets_no_flag_and_builds_the_float16_graph():
    trt = fake_trt("11.4.0", inputs=IMAGES16)
    assert not hasattr(trt.BuilderFlag, "FP16")  # as in TensorRT 11: touching it would raise
    _build(trt, fp16=True)
    assert trt.built.network.flags == 0  # strongly typed is the only kind; its flag is deprecated
    assert trt.built.config.set == [] and trt.built.config.cleared == []
    assert tb.graph_is_fp16(11, True) and not tb.graph_is_fp16(11, False)


def test_tensorrt_11_fp32_clears_tf32():
    trt = fake_trt("11.4.0", inputs=IMAGES32)
    _build(trt, fp16=False)
    assert trt.built.config.set == [] and trt.built.config.cleared == [trt.BuilderFlag.TF32]


def test_each_major_version_has_its_own_path():
    assert set(tb.BUILD_PATHS) == set(tb.SUPPORTED_MAJORS) == {10, 11}
    assert tb.BUILD_PATHS[10] is tb.network_and_config_trt10
    assert tb.BUILD_PATHS[11] is tb.network_and_config_trt11


@pytest.mark.parametrize("version, fp16, graph", [("11.4.0", True, IMAGES32), ("10.3.0", True, IMAGES16)])
def test_a_graph_of_the_wrong_precision_for_the_path_is_refused(version, fp16, graph):
    """TensorRT 11 fp16 must get the float16 graph (strong typing would run a float32 one in
    float32); TensorRT 10 builds fp16 from the float32 graph."""
    with pytest.raises(RuntimeError, match=r"g\.onnx: input images should be DataType\.(HALF|FLOAT)"):
        _build(fake_trt(version, inputs=graph), fp16=fp16)


def test_the_profile_covers_the_batch_and_every_keep_count():
    trt = fake_trt("10.3.0", inputs=IMAGES32 + COUNTS)
    _build(trt, fp16=False, counts=True)
    (profile,) = trt.built.config.profiles
    assert profile.shapes == {"images": ((1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))}
    assert profile.shape_inputs == {"keep_counts": ([1, 1, 1], [196] * 3, [196] * 3)}
    # the level graphs have no shape input and get no range for one
    trt = fake_trt("11.4.0", inputs=IMAGES32)
    _build(trt, fp16=False)
    assert trt.built.config.profiles[0].shape_inputs == {}


def test_a_keep_counts_input_that_is_not_a_shape_input_is_refused():
    trt = fake_trt("10.3.0", inputs=IMAGES32 + [("keep_counts", "int64", False)])
    with pytest.raises(RuntimeError, match="keep_counts is not a shape input"):
        _build(trt, fp16=False, counts=True)


def test_parse_and_build_failures_say_so():
    with pytest.raises(RuntimeError, match=r"cannot parse g\.onnx: In node 3 \(TopK\)"):
        _build(fake_trt("10.3.0", parse_ok=False), fp16=False)
    with pytest.raises(RuntimeError, match=r"failed to build an engine from g\.onnx"):
        _build(fake_trt("11.4.0", inputs=IMAGES32, plan=None), fp16=False)


# -- buffers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, dtype", [("int32", torch.int32), ("int64", torch.int64)])
def test_keep_counts_take_the_engine_s_declared_integer_dtype(name, dtype):
    trt = fake_trt("10.3.0")
    assert tb.keep_counts_dtype(trt, getattr(trt, name)) == dtype
    buf = tb.keep_counts_buffer([197, 138, 97], tb.keep_counts_dtype(trt, getattr(trt, name)))
    assert buf.dtype == dtype and buf.tolist() == [197, 138, 97] and buf.is_contiguous()
    assert buf.data_ptr() % tb.ALIGNMENT == 0


@pytest.mark.parametrize("name", ["float32", "float16", "int8", "bool"])
def test_any_other_keep_counts_dtype_is_refused_naming_both(name):
    trt = fake_trt("11.4.0")
    with pytest.raises(TypeError) as err:
        tb.keep_counts_dtype(trt, getattr(trt, name))
    msg = str(err.value)
    assert repr(getattr(trt, name)) in msg and "int32 or int64" in msg and "declares int64" in msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32, torch.int64, torch.bool])
def test_buffers_are_aligned_for_tensorrt(dtype):
    for n in (1, 3, 1000):
        t = tb.aligned_empty(n, dtype)
        assert t.shape == (n,) and t.dtype == dtype and t.data_ptr() % tb.ALIGNMENT == 0


def test_torch_dtypes_of_tensorrt_types():
    trt = fake_trt("11.4.0")
    assert tb.torch_dtype(trt, trt.float16) == torch.float16 and tb.torch_dtype(trt, trt.int64) == torch.int64
    assert tb.torch_dtype(trt, trt.float32) == torch.float32 and tb.torch_dtype(trt, trt.int32) == torch.int32
    with pytest.raises(TypeError, match="no torch dtype"):
        tb.torch_dtype(trt, _Named("DataType", "FP4"))


class _Engine:
    def __init__(self, trt, tensors):
        self.trt, self.tensors = trt, tensors  # name -> (mode, dtype)

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]


def test_outputs_are_allocated_as_the_context_reports_and_unknown_shapes_refused():
    trt = fake_trt("10.3.0")
    io_in, io_out = trt.TensorIOMode.INPUT, trt.TensorIOMode.OUTPUT
    engine = _Engine(
        trt,
        {
            "images": (io_in, trt.float16),
            "logits": (io_out, trt.float16),
            "kept_stage1": (io_out, trt.int64),
            "heatmap": (io_out, trt.float32),
        },
    )
    shapes = {"logits": (2, 1000), "kept_stage1": (2, 138), "heatmap": (2, 14, 14)}
    ctx = types.SimpleNamespace(get_tensor_shape=lambda name: shapes[name])
    out = tb.output_buffers(trt, engine, ctx, "cpu")
    assert list(out) == ["logits", "kept_stage1", "heatmap"]
    assert out["logits"].dtype == torch.float16 and out["kept_stage1"].dtype == torch.int64
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    shapes["kept_stage1"] = (2, -1)  # data-dependent: would need an IOutputAllocator
    with pytest.raises(RuntimeError, match=r"kept_stage1: shape \(2, -1\) is only known after the run"):
        tb.output_buffers(trt, engine, ctx, "cpu")


def test_binding_checks_alignment_and_tensorrt_s_answer():
    calls = []
    ctx = types.SimpleNamespace(set_tensor_address=lambda name, ptr: calls.append(name) or name != "bad")
    t = tb.aligned_empty(8, torch.float32)
    tb._bind(ctx, "images", t)
    with pytest.raises(RuntimeError, match="refused the address of tensor bad"):
        tb._bind(ctx, "bad", t)
    with pytest.raises(RuntimeError, match="not 256-byte aligned"):
        tb._bind(ctx, "images", tb.aligned_empty(8, torch.float32)[1:])
    assert calls == ["images", "bad"]


# -- the engine cache key --------------------------------------------------------------------------


def test_engine_cache_key_separates_what_makes_engines_differ():
    base = tb.engine_key(b"graph", "Orin", (8, 7), "10.3.0", True, 8)
    assert base == tb.engine_key(b"graph", "Orin", (8, 7), "10.3.0", True, 8) and len(base) == 24
    others = [
        tb.engine_key(b"graph2", "Orin", (8, 7), "10.3.0", True, 8),
        tb.engine_key(b"graph", "Xavier", (7, 2), "10.3.0", True, 8),
        tb.engine_key(b"graph", "Orin", (8, 7), "11.4.0", True, 8),
        tb.engine_key(b"graph", "Orin", (8, 7), "10.3.0", False, 8),
        tb.engine_key(b"graph", "Orin", (8, 7), "10.3.0", True, 4),
        tb.engine_key(b"graph", "Orin", (8, 7), "10.3.0", True, 8, recipe="r1"),  # engines built as before
    ]
    assert len({base, *others}) == 1 + len(others)


# -- the graphs each path builds from --------------------------------------------------------------


def test_graphs_are_traced_from_a_cpu_float32_model(tiny):
    assert tb._export_source(tiny) is tiny
    half = copy.deepcopy(tiny).half()
    src = tb._export_source(half)
    assert src is not half and next(src.parameters()).dtype == torch.float32
    assert next(half.parameters()).dtype == torch.float16  # the caller's model is not changed


def _elem_types(values):
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_float16_graph_for_tensorrt_11_runs_on_onnxruntime(tiny, images, tmp_path):
    """The fp16 level graph: float16 images and weights, LayerNorm's own weights float32 (it runs in
    float32), logits float16, kept indices int64 and the heatmap float32 as in the float32 graph;
    onnxruntime's CPU runs it close to the float32 model (level 1.0: every patch kept, so the
    comparison does not hinge on near-ties among a random model's scores)."""
    import onnxruntime as ort

    from iared_edge.export import export_onnx, export_onnx_counts, keep_counts_for

    F16, F32, I64 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    path = str(tmp_path / "keep1.fp16.onnx")
    names = export_onnx(tiny, path, 1.0, fp16=True)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert _elem_types(graph.graph.input) == {"images": F16}
    outs = _elem_types(graph.graph.output)
    assert outs["logits"] == F16 and outs["heatmap"] == F32 and {outs[f"kept_stage{s}"] for s in (1, 2, 3)} == {I64}
    norm_inputs = {i for n in graph.graph.node if n.op_type == "LayerNormalization" for i in n.input[1:]}
    for init in graph.graph.initializer:
        if init.data_type in (F16, F32):
            assert init.data_type == (F32 if init.name in norm_inputs else F16), init.name
    assert sum(n.op_type == "LayerNormalization" for n in graph.graph.node) == 2 * 12 + 3 + 1
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["input_dtype"] == '"float16"'
    x = images[:2]
    got = dict(zip(names, session.run(None, {"images": x.half().numpy()})))
    with torch.no_grad():
        ref = tiny(x, policy="level", level=1.0)
    assert got["logits"].dtype == np.float16
    assert np.abs(got["logits"].astype(np.float32) - ref.logits.numpy()).max() <= 1e-2
    assert np.abs(got["heatmap"] - ref.heatmap.numpy()).max() <= 1e-2
    # the counts graph in float16, fed every patch
    cpath = str(tmp_path / "keep_counts.fp16.onnx")
    export_onnx_counts(tiny, cpath, fp16=True)
    cgraph = onnx.load(cpath)
    assert _elem_types(cgraph.graph.input) == {"images": F16, "keep_counts": I64}
    counts = np.asarray(keep_counts_for(tiny, 1.0), np.int64)
    session = ort.InferenceSession(cpath, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": x.half().numpy(), "keep_counts": counts})[0]
    assert np.abs(logits.astype(np.float32) - ref.logits.numpy()).max() <= 1e-2
    # each path accepts its own graph and refuses the other (stand-in parser reads the real inputs)
    with open(path, "rb") as f:
        fp16_bytes = f.read()
    export_onnx(tiny, str(tmp_path / "keep1.onnx"), 1.0)
    with open(tmp_path / "keep1.onnx", "rb") as f:
        fp32_bytes = f.read()
    for version, fp16, data, ok in [
        ("11.4.0", True, fp16_bytes, True),
        ("11.4.0", False, fp32_bytes, True),
        ("10.3.0", True, fp32_bytes, True),
        ("11.4.0", True, fp32_bytes, False),
        ("10.3.0", True, fp16_bytes, False),
    ]:
        args = (fake_trt(version), None, data, tb.trt_major(version), fp16, (3, 224, 224), 4)
        if ok:
            assert tb.build_serialized_engine(*args) == b"plan"
        else:
            with pytest.raises(RuntimeError, match="input images should be"):
                tb.build_serialized_engine(*args)


def test_float16_and_int8_together_are_refused(tiny, tmp_path):
    from iared_edge.export import export_onnx

    with pytest.raises(ValueError, match="fp16 and int8"):
        export_onnx(tiny, str(tmp_path / "x.onnx"), 0.5, int8=True, fp16=True)


# -- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_tensorrt_engines_match_torch(tiny, tmp_path):
    """Real engines of the installed TensorRT (10 or 11, each through its own path): fp32 with TF32
    off on both sides matches the torch model's logits and keep masks; fp16 within a tolerance."""
    pytest.importorskip("tensorrt")
    from iared_edge.export.tensorrt_backend import TensorRTBackend

    m = copy.deepcopy(tiny).cuda().eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3)).cuda()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            refs = {level: m(x, policy="level", level=level) for level in (1.0, 0.5)}
        for form in ("levels", "counts"):
            fp32 = TensorRTBackend(m, [1.0, 0.5], str(tmp_path / form), fp16=False, form=form)
            for level, ref in refs.items():
                out = fp32(x, level)
                assert out.logits.dtype == torch.float32 and out.logits.device == x.device
                assert (out.logits - ref.logits).abs().max().item() <= 1e-3
                assert (out.heatmap - ref.heatmap).abs().max().item() <= 1e-4
                assert torch.equal(out.keep_masks, ref.keep_masks)
            fp16 = TensorRTBackend(m, [1.0], str(tmp_path / form), fp16=True, form=form)
            out = fp16(x, 1.0)
            assert out.logits.dtype == torch.float32 and bool(out.keep_masks.all())
            assert (out.logits - refs[1.0].logits).abs().max().item() <= 2e-2
            assert (out.heatmap - refs[1.0].heatmap).abs().max().item() <= 1e-2
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
