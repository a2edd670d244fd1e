"""Run every check on a dataset (and a checkpoint, if given) and collect the sections of the report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..autoencoder import check_image_size
from .checkpoint_checks import check_statistics, check_teacher, check_thresholds, check_training
from .data_checks import (
    check_counts,
    check_duplicates,
    check_formats,
    check_resize,
    check_validation_split,
    inspect_images,
)
from .dataset import DatasetImage, load_dataset
from .defect_sizes import check_defect_sizes
from .findings import Finding, Section
from .report import sorted_findings, summary, write_report
from .score_checks import check_border, check_branches, check_galleries, check_scores
from .scoring import load_checkpoint, model_from_checkpoint, score_images

DEFAULT_IMAGE_SIZE = (256, 256)
MAX_TRAIN_IMAGES = 50  # training images scored for the histogram; evenly spaced over the split


@dataclass
class Diagnosis:
    """The report's sections; ``findings`` lists them errors first."""

    title: str
    sections: list[Section]

    @property
    def findings(self) -> list[Finding]:
        """All findings, errors first."""
        return sorted_findings(self.sections)

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds."""
        return summary(self.title, self.sections)

    def write(self, output: str | Path) -> tuple[Path, Path]:
        """Write ``report.html`` and ``summary.json`` into ``output``."""
        return write_report(self.title, self.sections, output)


def _model_section(checkpoint: dict[str, Any], images: list[DatasetImage], max_train_images: int) -> Section:
    section = Section("Model")
    for check in (check_training, check_teacher, check_statistics, check_thresholds):
        check(section, checkpoint)
    if any(finding.check == "normalisation" for finding in section.findings):
        return section  # an unfitted model's scores mean nothing
    train = [image for image in images if image.split == "train"]
    train = train[::max(1, math.ceil(len(train) / max_train_images))]
    if checkpoint.get("branch_choice") is not None:  # how the local and global maps were weighted, and why
        section.facts["branch_choice"] = checkpoint["branch_choice"]
    scored = score_images(model_from_checkpoint(checkpoint), train + [i for i in images if i.split != "train"])
    check_scores(section, scored, section.facts["image_threshold"])
    check_branches(section, scored)
    check_galleries(section, scored)
    check_border(section, scored)
    return section


def diagnose(source: str | Path, checkpoint: str | Path | None = None,
             image_size: tuple[int, int] | int | None = None, max_train_images: int = MAX_TRAIN_IMAGES) -> Diagnosis:
    """Check the data of ``source`` (an anomalib data config or an image folder) and, with ``checkpoint``, the model.

    ``image_size`` for the data checks: this argument, else the checkpoint's, else the config's model argument,
    else 256x256. The model checks score images at the checkpoint's own size.
    """
    dataset, model_arguments = load_dataset(source)
    trained = load_checkpoint(checkpoint) if checkpoint is not None else None
    if image_size is None and trained is not None:
        image_size = trained.get("hyper_parameters", {}).get("image_size")
    image_size = check_image_size(image_size or model_arguments.get("image_size") or DEFAULT_IMAGE_SIZE)
    data = Section("Data", facts={"source": str(source), "image_size": list(image_size)})
    if dataset.config:
        data.facts["config"] = dataset.config
    infos = inspect_images(dataset.images)
    check_counts(data, dataset)
    check_formats(data, infos)
    check_duplicates(data, infos)
    if dataset.config:
        check_validation_split(data, dataset.val_split_mode)
    check_resize(data, infos, image_size)
    usable = [info.image for info in infos if info.problem is None]
    native_side = max((max(info.size) for info in infos if info.size), default=max(image_size))
    check_defect_sizes(data, usable, image_size, native_side)
    sections = [data]
    if trained is not None:
        sections.append(_model_section(trained, usable, max_train_images))
        sections[-1].facts["checkpoint"] = str(checkpoint)
    return Diagnosis(f"EfficientAD diagnosis: {dataset.name}", sections)
