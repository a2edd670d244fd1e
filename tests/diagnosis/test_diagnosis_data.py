"""Data checks of the diagnosis report: each problem planted in generated data is found, with a suggestion."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from efficientad_plugin.data import generate_mvtec_dataset
from efficientad_plugin.diagnosis import Section, Severity, diagnose, load_dataset
from efficientad_plugin.diagnosis.dataset import DatasetImage
from efficientad_plugin.diagnosis.defect_sizes import check_defect_sizes, defect_sides


def _findings(diagnosis: object) -> dict[str, list]:
    found: dict[str, list] = {}
    for finding in diagnosis.findings:
        found.setdefault(finding.check, []).append(finding)
    return found


def _speck(category: Path, name: str, centre: tuple[int, int], side: int) -> None:
    """A defect type ``speck``: a copy of a normal image with a dark ``side`` x ``side`` square, and its mask."""
    image = np.asarray(Image.open(category / "train" / "good" / "000.png")).copy()
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    rows, columns = slice(centre[0], centre[0] + side), slice(centre[1], centre[1] + side)
    image[rows, columns], mask[rows, columns] = 10, 255
    for folder in ("test/speck", "ground_truth/speck"):
        (category / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(category / "test" / "speck" / f"{name}.png")
    Image.fromarray(mask).save(category / "ground_truth" / "speck" / f"{name}_mask.png")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A category with a corrupt file, a duplicate, a test image copied from training and tiny defects."""
    category = generate_mvtec_dataset(tmp_path_factory.mktemp("planted"), num_train=6, num_test_good=2,
                                      num_test_defect=2, seed=3)
    train = category / "train" / "good"
    png = (train / "005.png").read_bytes()
    (train / "truncated.png").write_bytes(png[: len(png) // 3])
    shutil.copy(train / "000.png", train / "000_copy.png")
    shutil.copy(train / "001.png", category / "test" / "good" / "leaked.png")
    for index in range(3):
        _speck(category, f"{index:03d}", (100 + 20 * index, 120), side=3)
    return category


def test_planted_problems_are_each_reported_with_a_suggestion(planted: Path) -> None:
    diagnosis = diagnose(planted)
    found = _findings(diagnosis)
    [unusable] = found["unusable files"]
    assert unusable.severity == Severity.ERROR
    assert "truncated.png" in unusable.message
    [duplicates] = found["duplicates"]
    assert "000.png" in duplicates.message and "000_copy.png" in duplicates.message
    [leakage] = found["test leakage"]
    assert leakage.severity == Severity.ERROR and "leaked.png" in leakage.message
    [tiny] = found["tiny defects"]
    assert "image_size" in tiny.suggestion or "tiles" in tiny.suggestion
    assert found["normal images"][0].severity == Severity.WARNING  # 8 files, 7 usable: far below 50
    assert all(finding.suggestion for finding in diagnosis.findings)
    facts = diagnosis.sections[0].facts
    assert facts["counts"] == {"train": {"good": 8}, "test": {"defect": 2, "good": 3, "speck": 3}}
    assert facts["defect_sizes"]["regions"] == 5 and facts["defect_sizes"]["tiny_share"] == pytest.approx(0.6)
    assert [str(planted / "train/good/000.png"), str(planted / "train/good/000_copy.png")] in facts["duplicate_groups"]
    assert list(facts["unusable"]) == [str(planted / "train/good/truncated.png")]


def test_clean_data_has_no_errors(synthetic_root: Path) -> None:
    diagnosis = diagnose(synthetic_root / "synthetic")
    assert not [finding for finding in diagnosis.findings if finding.severity == Severity.ERROR]
    assert {finding.check for finding in diagnosis.findings} == {"normal images"}  # 10 training images


def test_defect_sides_are_in_model_pixels(tmp_path: Path) -> None:
    mask = np.zeros((512, 1024), dtype=np.uint8)
    mask[10:30, 10:30] = 255  # 400 px at native size
    mask[100:102, 500:600] = 255  # 200 px: a thin scratch, separate region
    Image.fromarray(mask).save(tmp_path / "mask.png")
    sides = defect_sides(str(tmp_path / "mask.png"), (256, 256))  # 8x fewer pixels
    assert sorted(sides) == pytest.approx([np.sqrt(200 / 8), np.sqrt(400 / 8)])


@pytest.mark.parametrize(("native_side", "remedy"), [(2048, "--model.image_size [416, 416]"), (256, "tiles")])
def test_tiny_defects_suggest_a_size_or_tiling(tmp_path: Path, native_side: int, remedy: str) -> None:
    mask = np.zeros((256, 256), dtype=np.uint8)
    mask[50:55, 50:55] = 255  # 4.7 px at 240x240; 8 px needs 1.71x: 409.6, rounded up to a multiple of 32
    Image.fromarray(mask).save(tmp_path / "000_mask.png")
    image = DatasetImage(tmp_path / "000.png", 1, tmp_path / "000_mask.png", "test", "speck")
    section = Section("Data")
    check_defect_sizes(section, [image], (240, 240), native_side)
    [finding] = section.findings
    assert finding.check == "tiny defects" and remedy in finding.suggestion
    assert section.figures and section.figures[0].png.startswith(b"\x89PNG")


def test_formats_sizes_and_aspect_ratio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 600, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 256, (300, 600, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rng.integers(0, 60_000, (300, 600), dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rng.integers(0, 256, (320, 640, 3), dtype=np.uint8)).save(tmp_path / "other.png")
    diagnosis = diagnose(tmp_path)  # a plain folder: all normal training images
    found = _findings(diagnosis)
    assert "deep.png" in found["unusable files"][0].message and "16-bit" in found["unusable files"][0].message
    assert "alpha.png" in found["alpha channel"][0].message
    assert "mixed sizes" in found
    assert "[256, 512]" in found["resize distortion"][0].suggestion  # w/h 2 at image_size 256x256
    assert "test split" in found  # no test images: nothing to measure
    assert diagnosis.sections[0].facts["modes"] == {"RGB": 2, "RGBA": 1, "I;16": 1}


def test_config_with_test_as_validation_and_a_validation_folder_copying_test(planted: Path, tmp_path: Path) -> None:
    category = tmp_path / "planted"
    shutil.copytree(planted, category)
    (category / "validation" / "good").mkdir(parents=True)
    shutil.copy(category / "test" / "good" / "000.png", category / "validation" / "good" / "v.png")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "EfficientAdPlugin", "init_args": {"image_size": [256, 320]}},
        "data": {"class_path": "anomalib.data.MVTecAD", "init_args": {"root": str(tmp_path), "category": "planted"}},
    }))
    diagnosis = diagnose(config)
    found = _findings(diagnosis)
    assert found["validation split"][0].severity == Severity.ERROR  # MVTecAD's default: same_as_test
    assert "from_train" in found["validation split"][0].suggestion
    assert any("validation" in finding.message and "v.png" in finding.message for finding in found["test leakage"])
    assert diagnosis.sections[0].facts["image_size"] == [256, 320]
    assert diagnosis.sections[0].facts["val_split_mode"] == "same_as_test"


def test_folder_config_pairs_masks_by_stem(synthetic_root: Path, tmp_path: Path) -> None:
    category = synthetic_root / "synthetic"
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "Folder", "init_args": {
        "name": "parts", "root": str(category), "normal_dir": "train/good", "abnormal_dir": "test/defect",
        "normal_test_dir": "test/good", "mask_dir": "ground_truth/defect", "val_split_mode": "from_train"}}}))
    dataset, model_arguments = load_dataset(config)
    assert model_arguments == {}
    assert dataset.val_split_mode == "from_train"
    assert [len(dataset.split(split, label)) for split, label in (("train", 0), ("test", 0), ("test", 1))] == [10, 4, 4]
    for image in dataset.split("test", 1):
        assert image.mask == category / "ground_truth" / "defect" / f"{image.path.stem}_mask.png"
        assert image.defect_type == "defect"


def test_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither"):
        diagnose(tmp_path / "absent")


@pytest.mark.parametrize(("camera", "boxes", "setting"), [(640, (31, 39, 45), "local_size native"),
                                                         (2000, (100, 110, 120), "local_size [672, 672]")])
def test_defects_below_the_patch_recommend_native_mode_at_the_scale_needed(
        tmp_path: Path, camera: int, boxes: tuple[int, ...], setting: str) -> None:
    mask = np.zeros((camera, camera), dtype=np.uint8)
    for index, box in enumerate(boxes):  # DeepPCB's 31 / 39 px (p10 / median) are 12 / 16 px at 256
        mask[100 + 200 * index : 100 + 200 * index + box, 100 : 100 + box] = 255
    Image.fromarray(mask).save(tmp_path / "000_mask.png")
    image = DatasetImage(tmp_path / "000.png", 1, tmp_path / "000_mask.png", "test", "short")
    section = Section("Data")
    check_defect_sizes(section, [image], (256, 256), camera)
    [finding] = [finding for finding in section.findings if finding.check == "native resolution"]
    # 640: the 10th-percentile defect (32.6 px) needs every pixel; 2000: 33 / 102 of 2000 = 647, up to 672
    assert setting in finding.suggestion
    assert section.facts["native_mode"]["median_side_px_native"] == pytest.approx(boxes[1])
    small = Section("Data")
    check_defect_sizes(small, [image], (camera, camera), camera)  # already at full size: nothing to recommend
    assert not [finding for finding in small.findings if finding.check == "native resolution"]
