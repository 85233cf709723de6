"""Run by tests/test_train.py under `torchrun --nproc_per_node 2`: a few REINFORCE and fine-tuning
steps on per-rank data, then each rank writes its weights so the test can compare them."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_train import tiny_vit  # noqa: E402

from iared_edge.train import distributed as dist  # noqa: E402
from iared_edge.train import finetune_backbone, train_interpreters  # noqa: E402

out = sys.argv[1]
device = dist.setup("cpu")
rank = dist.rank()
model = tiny_vit(2)  # same start on every rank
g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
x = torch.randn(16, 3, 32, 32, generator=g)
y = torch.randint(0, 4, (16,), generator=g)
train_interpreters(model, [(x, y)], steps_per_stage=2, lr=1e-2, progress=False, device=device)
finetune_backbone(model, [(x, y)], steps=2, lr=1e-3, progress=False, device=device)
torch.save(
    {"interpreters": model.interpreters.state_dict(), "backbone": model.vit.state_dict(), "world": dist.world_size()},
    os.path.join(out, f"rank{rank}.pt"),
)
dist.cleanup()
