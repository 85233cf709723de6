import os
import random
import warnings

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# fp32 results are compared exactly (keep masks) against torch references: no TF32 on sm_80+,
# where cuDNN convolutions use it by default (matmuls do not, unless asked)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
warnings.filterwarnings("ignore", message="iared_edge._C is not built")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it: a tolerance that
    holds for one draw holds in CI too (an unseeded draw once failed CI)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny():
    from iared_edge import IARedViT

    torch.manual_seed(0)
    return IARedViT.from_timm("deit_tiny_patch16_224").eval()


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 224, 224, generator=g)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip where torch sees no CUDA GPU (they run on a lent GPU:
    benchmarks/gpu_check.sh)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
