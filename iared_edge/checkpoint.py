"""Weights in and out without unpickling code.

`save_model` writes one .safetensors file whose metadata holds the JSON config (timm name and
arguments, groups, thresholds, labels); `load_model` rebuilds the model from it. Official
timm/DeiT `.pth` files load into the backbone with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
import torch.nn as nn

FORMAT = "iared-edge/1"
CONFIG_KEY = "iared_edge_config"


def _read_safetensors(path: str):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated/foreign files
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if os.path.getsize(path) < 8:
        raise ValueError(f"{path}: file is empty or truncated ({os.path.getsize(path)} bytes)")


def save_model(model, path: str, dtype: Optional[torch.dtype] = None) -> None:
    """Write `model` (an IARedViT) to `path` (.safetensors); `dtype=torch.float16` halves the size."""
    from safetensors.torch import save_file

    if not str(path).endswith(".safetensors"):
        raise ValueError(f"save_model writes safetensors: give a path ending in .safetensors, got {path}")
    if model.timm_name is None:
        raise ValueError("save_model: the model has no timm_name (build it with IARedViT.from_timm)")
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {"format": FORMAT, CONFIG_KEY: json.dumps(model.config())}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def load_model(path: str, device: str | torch.device = "cpu"):
    """Rebuild an IARedViT saved by `save_model` ("demo": the bundled demo model). Weights come
    back as float32."""
    import timm

    from .model import IARedViT, register_backbone

    if path == "demo":
        from .demo import DEMO_MODEL

        if not os.path.isfile(DEMO_MODEL):
            raise FileNotFoundError(
                f"the bundled demo model is missing ({DEMO_MODEL}): reinstall the "
                "package, or train it with `python -m iared_edge.demo.train`"
            )
        path = DEMO_MODEL
    _check_file(path)
    tensors, meta = _read_safetensors(path)
    if CONFIG_KEY not in meta:
        raise ValueError(
            f"{path}: has no iared-edge config (not written by save_model); for a plain "
            "timm/DeiT checkpoint use IARedViT.from_timm(name, checkpoint=path)"
        )
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this version reads {FORMAT!r}")
    cfg = json.loads(meta[CONFIG_KEY])
    register_backbone(cfg["timm_name"])
    try:
        vit = timm.create_model(cfg["timm_name"], pretrained=False, **cfg["timm_kwargs"])
    except Exception as exc:
        raise ValueError(f"{path}: cannot build timm model {cfg['timm_name']!r} ({exc})") from exc
    model = IARedViT(
        vit,
        groups=cfg["groups"],
        thresholds=cfg["thresholds"],
        labels=cfg["labels"],
        timm_name=cfg["timm_name"],
        timm_kwargs=cfg["timm_kwargs"],
        init_interpreters=False,
        keep_profile=cfg.get("keep_profile"),
    )
    _load_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, path)
    return model.to(device).eval()


def _load_strict(module: nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"shape mismatch {len(shapes)} (e.g. {shapes[:2]})")
        raise ValueError(f"{path}: weights do not match the model: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt/.bin with torch.load(weights_only=True)."""
    _check_file(path)
    if path.endswith(".safetensors"):
        return _read_safetensors(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({exc})") from exc
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: does not hold a state dict of tensors")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_backbone_state_dict(vit: nn.Module, path: str) -> None:
    """Load a timm/DeiT checkpoint into the timm backbone (timm's own key conversion applied)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    if set(state) != set(vit.state_dict()):
        state = checkpoint_filter_fn(state, vit)
    _load_strict(vit, state, path)


def names_saved_model(model) -> bool:
    """Whether `model` names trained weights saved by `save_model` ("demo" or a .safetensors
    path), as opposed to a timm model name."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    path = os.fspath(model)
    return path == "demo" or path.endswith(".safetensors")


def resolve_model(model, checkpoint: Optional[str] = None):
    """An IARedViT from an IARedViT, "demo" (the bundled demo model), a path saved by
    `save_model`, or a timm model name (with `checkpoint`, its timm/DeiT weights)."""
    from .model import IARedViT

    if isinstance(model, IARedViT):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if names_saved_model(path):
            return load_model(path)
        if os.path.exists(path):
            raise ValueError(
                f"{path}: not a model saved by save_model (a .safetensors file); timm/DeiT "
                "weights (.pth) go with a timm model name as the checkpoint"
            )
        return IARedViT.from_timm(path, checkpoint=checkpoint).eval()
    raise TypeError(f"model must be an IARedViT, a .safetensors path or a timm model name, got {type(model).__name__}")
