"""Which images a diagnosis looks at: an anomalib data config, an MVTec-layout category or a folder of normal images."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..evaluation import TestImage, mvtec_split_images
from ..images import list_images

VAL_FOLDERS = ("validation", "val")  # MVTec LOCO and some custom sets ship a held-out validation folder


@dataclass(frozen=True)
class DatasetImage(TestImage):
    """An image with its split (``train``, ``val`` or ``test``) and defect type (``good`` for normal images)."""

    split: str = "train"
    defect_type: str = "good"


@dataclass
class Dataset:
    """The images of one dataset and what its config says about validation and image size."""

    name: str
    images: list[DatasetImage]
    val_split_mode: str | None = None  # from a data config; None for a folder
    config: dict[str, Any] = field(default_factory=dict)  # the data config's init_args, for the report

    def split(self, split: str, label: int | None = None) -> list[DatasetImage]:
        """Images of ``split``, optionally only normal (0) or only defective (1) ones."""
        return [image for image in self.images if image.split == split and label in (None, image.label)]


def _split_images(category: Path, folder: str, split: str) -> list[DatasetImage]:
    return [DatasetImage(image.path, image.label, image.mask, split, image.path.parent.name)
            for image in mvtec_split_images(category, folder)]


def mvtec_dataset(category: str | Path) -> Dataset:
    """``train``, an optional ``validation``/``val`` folder and ``test`` of an MVTec-layout category folder."""
    category = Path(category)
    val_folder = next((name for name in VAL_FOLDERS if (category / name).is_dir()), None)
    folders = {"train": "train", "val": val_folder, "test": "test"}
    images = [image for split, folder in folders.items() if folder and (category / folder).is_dir()
              for image in _split_images(category, folder, split)]
    return Dataset(category.name, images)


def folder_dataset(folder: str | Path) -> Dataset:
    """An MVTec-layout category when ``folder`` has ``train`` or ``test``, else a folder of normal training images."""
    folder = Path(folder)
    if any((folder / split).is_dir() for split in ("train", "test")):
        return mvtec_dataset(folder)
    return Dataset(folder.name, [DatasetImage(path, 0, None, "train", "good") for path in list_images(folder)])


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str | Path) else list(value)


def _anomalib_folder(arguments: dict[str, Any]) -> list[DatasetImage]:
    """The images anomalib's ``Folder`` data module reads: masks pair with defective images by file stem."""
    root = Path(arguments.get("root") or ".")
    images = [DatasetImage(path, 0, None, "train", "good")
              for directory in _as_list(arguments["normal_dir"]) for path in list_images(root / directory)]
    images += [DatasetImage(path, 0, None, "test", "good")
               for directory in _as_list(arguments.get("normal_test_dir")) for path in list_images(root / directory)]
    masks = [path for directory in _as_list(arguments.get("mask_dir")) for path in list_images(root / directory)]
    for directory in _as_list(arguments.get("abnormal_dir")):
        for path in list_images(root / directory):
            matches = sorted((mask for mask in masks if path.stem in mask.stem), key=lambda mask: len(mask.stem))
            images.append(DatasetImage(path, 1, matches[0] if matches else None, "test", Path(directory).name))
    return images


def _default_argument(class_path: str, name: str) -> Any:  # noqa: ANN401 (any init argument's default)
    """The default of ``name`` in the data class's signature (``anomalib.data.<X>`` for a short class path)."""
    module, _, class_name = class_path.rpartition(".")
    data_class = getattr(importlib.import_module(module or "anomalib.data"), class_name, None)
    if data_class is None:
        return None
    parameter = inspect.signature(data_class).parameters.get(name)
    default = None if parameter is None else parameter.default
    return getattr(default, "value", default)  # ValSplitMode members hold their name as value


def config_dataset(config_file: str | Path) -> tuple[Dataset, dict[str, Any]]:
    """The dataset of an anomalib config (``data.class_path``/``init_args``) and the config's model ``init_args``.

    ``root`` and folders are relative to the working directory, as for ``anomalib train --config``.
    """
    config = yaml.safe_load(Path(config_file).read_text()) or {}
    data = config.get("data") or {}
    class_path, arguments = data.get("class_path", ""), dict(data.get("init_args") or {})
    if "category" in arguments:
        category = Path(arguments.get("root") or ".") / str(arguments["category"])
        if not category.is_dir():
            msg = f"{config_file}: no folder {category} (root/category; relative to {Path.cwd()})."
            raise FileNotFoundError(msg)
        dataset = mvtec_dataset(category)
    elif "normal_dir" in arguments:
        dataset = Dataset(str(arguments.get("name", "folder")), _anomalib_folder(arguments))
    else:
        msg = f"{config_file}: data.init_args needs root and category (MVTec layout) or normal_dir (Folder)."
        raise ValueError(msg)
    val_split_mode = arguments.get("val_split_mode") or _default_argument(class_path, "val_split_mode")
    dataset.val_split_mode = None if val_split_mode is None else str(val_split_mode)
    dataset.config = {"class_path": class_path, **{key: str(value) for key, value in arguments.items()}}
    return dataset, dict((config.get("model") or {}).get("init_args") or {})


def load_dataset(source: str | Path) -> tuple[Dataset, dict[str, Any]]:
    """A config file (``.yaml``/``.yml``) or an image folder; with the config's model arguments (empty for folders)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() in {".yaml", ".yml"}:
        return config_dataset(source)
    if not source.is_dir():
        msg = f"{source} is neither an anomalib data config (.yaml) nor an image folder."
        raise FileNotFoundError(msg)
    return folder_dataset(source), {}
