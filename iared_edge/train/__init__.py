"""Training the interpreters: threshold calibration and REINFORCE."""
from .calibrate import calibrate_thresholds, geometric_keep_targets
from .reinforce import ReinforceConfig, freeze_backbone, reinforce_step, rewards

__all__ = ["calibrate_thresholds", "geometric_keep_targets", "ReinforceConfig", "freeze_backbone",
           "reinforce_step", "rewards"]
