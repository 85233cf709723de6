"""Multi-process training through torchrun and DistributedDataParallel.

    torchrun --nproc_per_node 4 -m iared_edge.cli train --model ... --data ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `setup` joins the process group (NCCL on GPUs, Gloo
on CPUs) and gives each process its device. Without torchrun everything here is a no-op, so the
same training code runs in a notebook.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..devices import resolve_device


def setup(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun; return this process's device."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", str(dev.index or 0)))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return dev


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def wrap_ddp(module: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """`module` in DistributedDataParallel when several processes train, else itself. Unused
    parameters are allowed: the curriculum leaves later stages' interpreters out of the graph."""
    if world_size() == 1:
        return module
    device = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
