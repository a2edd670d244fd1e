"""Why does EfficientAD not work on my parts? Checks of a dataset and a trained checkpoint, as an HTML report."""

from .dataset import Dataset, DatasetImage, load_dataset
from .diagnose import Diagnosis, diagnose
from .findings import Figure, Finding, Section, Severity

__all__ = ["Dataset", "DatasetImage", "Diagnosis", "Figure", "Finding", "Section", "Severity", "diagnose",
           "load_dataset"]
