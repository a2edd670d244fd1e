"""EfficientAD for anomalib, faithful to the paper and usable offline."""

import anomalib.models as _anomalib_models

from .lightning_model import EfficientAdPlugin
from .post_processing import FalseAlarmRatePostProcessor
from .teacher_weights import PDNMediumWeights, PDNSmallWeights

__all__ = ["EfficientAdPlugin", "FalseAlarmRatePostProcessor", "PDNMediumWeights", "PDNSmallWeights"]

# anomalib resolves short model names (benchmark's ``class_path: EfficientAdPlugin``) by attribute on its package.
_anomalib_models.EfficientAdPlugin = EfficientAdPlugin
