"""Training the interpreters: calibration of thresholds (REINFORCE comes with issue 5)."""
from .calibrate import calibrate_thresholds, geometric_keep_targets

__all__ = ["calibrate_thresholds", "geometric_keep_targets"]
