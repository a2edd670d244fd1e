"""A training run for the reproducibility tests, in its own process so that it can really be killed.

usage: python training_run.py DATA_ROOT OUTPUT_DIR MAX_STEPS [CKPT_PATH]
Writes OUTPUT_DIR/steps.jsonl (one line per finished step: step, loss, image) and, when training ends,
OUTPUT_DIR/final.pt (the model's state dict).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from efficientad_plugin import EfficientAdPlugin

CHECKPOINT_EVERY = 2


class StepLog(Callback):
    """Append each finished step's loss and image to steps.jsonl, flushed at once (the process may be killed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: dict, batch: object,
                           batch_idx: int) -> None:
        del pl_module, batch_idx
        record = {"step": trainer.global_step, "loss": float(outputs["loss"]), "image": Path(batch.image_path[0]).name}
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def main(data_root: str, output: str, max_steps: str, ckpt_path: str | None = None) -> None:
    output_dir = Path(output)
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    datamodule = MVTecAD(root=data_root, category="synthetic", train_batch_size=1, eval_batch_size=4, num_workers=0,
                         val_split_mode="from_train", val_split_ratio=0.2, seed=0)
    model = EfficientAdPlugin(teacher_weights="untrained", penalty_dir="bundled", max_steps=int(max_steps),
                              checkpoint_every_n_steps=CHECKPOINT_EVERY, evaluator=False, visualizer=False)
    engine = Engine(default_root_dir=output_dir, logger=False, accelerator="cpu", devices=1,
                    callbacks=[StepLog(output_dir / "steps.jsonl")])
    engine.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    torch.save(model.state_dict(), output_dir / "final.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
