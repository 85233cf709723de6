"""The batch-1 forward dispatches few ops beyond timm's own: at batch 1 each op costs more than its
arithmetic (on a GPU, each is a kernel launch), so the count is what a CPU can measure of it."""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from iared_edge import IARedViT, ops


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(fn) -> Counter:
    with torch.inference_mode():
        fn()  # caches (folded interpreter weights) settle first, as in a stream
        with CountOps() as c:
            fn()
    return c.ops


@pytest.fixture(scope="module")
def deit_s():
    torch.manual_seed(0)
    return IARedViT.from_timm("deit_small_patch16_224").eval()


@pytest.fixture(params=["cpu", "gpu"])
def route(request, monkeypatch):
    """The ops as the CPU runs them (a stage's selection in one compiled call), or as a GPU does:
    the fold as the reference's matmuls, the selection as separate compiled ops, each through the
    dispatcher so that each counts (on a GPU each is a launch)."""
    if request.param == "gpu":
        monkeypatch.setattr(ops, "_stage_direct", None)
        monkeypatch.setattr(ops, "_stage_op", None)
        monkeypatch.setattr(ops, "_fold_direct", None)
        monkeypatch.setattr(ops, "_fold_op", None)
        monkeypatch.setattr(ops, "_is_tracing", lambda: True)
    return request.param


@pytest.mark.parametrize(
    "policy, kwargs, extra_per_stage",
    [
        ("all", {}, {"cpu": 0, "gpu": 0}),
        ("level", {"level": 0.7}, {"cpu": 8, "gpu": 15}),
        ("level", {"level": 0.5}, {"cpu": 8, "gpu": 15}),
        ("threshold", {}, {"cpu": 8, "gpu": 15}),
    ],
)
def test_the_batch_1_forward_dispatches_at_most_timms_ops_plus_a_few(deit_s, route, policy, kwargs, extra_per_stage):
    x = torch.randn(1, 3, 224, 224)
    timm_ops = sum(count(lambda: deit_s.vit(x)).values())
    ours = count(lambda: deit_s(x, policy=policy, **kwargs))
    if route == "gpu" and policy != "all":  # the route taken is the one counted
        assert ours["iared.compact"] == deit_s.num_stages and ours["aten.layer_norm"] >= deit_s.num_stages
    bound = timm_ops + extra_per_stage[route] * deit_s.num_stages + 20
    assert sum(ours.values()) <= bound, (
        sum(ours.values()),
        bound,
        (ours - count(lambda: deit_s.vit(x))).most_common(12),
    )


def test_lazy_outputs_are_the_forwards_own(deit_s):
    """Per-patch outputs are built on first access from what each stage kept; they equal the
    masked execution's, which builds them eagerly, and the scores of a stage that dropped nothing
    are those of the tokens as they were then."""
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for policy, kwargs in (("all", {}), ("level", {"level": 0.5}), ("threshold", {})):
            packed = deit_s(x, policy=policy, **kwargs)
            masked = deit_s(x, policy=policy, execution="masked", **kwargs)
            assert torch.equal(packed.keep_masks, masked.keep_masks), policy
            assert torch.allclose(packed.scores, masked.scores, atol=1e-5), policy
            assert torch.allclose(packed.heatmap, masked.heatmap, atol=1e-5), policy
            assert torch.equal(packed.flops, masked.flops), policy
