"""Teacher distillation (paper §3.1, App. A) and the nearest-neighbour probe that judges a teacher's features.

The backbone sees images at twice the PDN's resolution; its stride-8 and stride-16 features are aggregated over
3x3 neighbourhoods, pooled to 384 channels, normalised per channel over the training images, and the PDN, with
padding on so both maps align, regresses them with an MSE loss. Training goes through Lightning
(:class:`TeacherDistillation`); :func:`distill` runs it and writes the teacher with its provenance.
"""

from .config import DistillationConfig
from .data import DistillationImages, StepBatchSampler
from .lightning_module import TeacherDistillation, learning_rate_schedule
from .probe import feature_extractor, probe
from .targets import FeatureTarget, load_backbone
from .train import checkpoint_path, distill

__all__ = [
    "DistillationConfig",
    "DistillationImages",
    "FeatureTarget",
    "StepBatchSampler",
    "TeacherDistillation",
    "checkpoint_path",
    "distill",
    "feature_extractor",
    "learning_rate_schedule",
    "load_backbone",
    "probe",
]
