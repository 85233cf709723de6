"""Training: threshold calibration, REINFORCE for the interpreters, backbone fine-tuning, torchrun/DDP."""

from .calibrate import calibrate_thresholds, geometric_keep_targets, measure_keep_profile, scaled_keep_targets
from .finetune import distill_loss, finetune_backbone
from .loop import evaluate, paired_comparison, predict, seed_everything, summarize, train_interpreters
from .reinforce import ReinforceConfig, freeze_backbone, reinforce_step, rewards

__all__ = [
    "calibrate_thresholds",
    "geometric_keep_targets",
    "measure_keep_profile",
    "scaled_keep_targets",
    "ReinforceConfig",
    "freeze_backbone",
    "reinforce_step",
    "rewards",
    "train_interpreters",
    "evaluate",
    "predict",
    "summarize",
    "paired_comparison",
    "seed_everything",
    "finetune_backbone",
    "distill_loss",
]
