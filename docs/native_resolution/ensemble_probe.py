"""Upper bound for a multi-scale local map on DeepPCB's box masks (issue 28).

The native local map is sharp (the 33-px patch at 640 px), the 256-px model's map 2.5x as wide. A local branch that
scores the image at both scales could combine the two. This probe bounds what such a map could reach without
building it: it averages the quantile-normalised maps of two separately trained models (the native one and the
256-px one, the latter upsampled bilinearly to 640 px) and scores pixel AUROC and AU-PRO against the 640-px masks.
Two models cost twice the training minutes, so the numbers are an optimistic bound for one multi-scale model trained
in the minutes of one, and they are measured on the test split: read them as a bound, not as a tuned setting.

Usage: python docs/native_resolution/ensemble_probe.py \
    --native configs/convergence/pcb_native_native.yaml <native snapshot> \
    --coarse configs/convergence/pcb_native_256.yaml <256-px snapshot> --output <json>
"""
import argparse
import json
import time
from types import SimpleNamespace

import torch
import yaml
from anomalib.data import Folder
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC
from anomalib.models.components import GaussianBlur2d
from torch.nn import functional as F  # noqa: N812

from efficientad_plugin import EfficientAdPlugin

parser = argparse.ArgumentParser()
parser.add_argument("--native", nargs=2, required=True, metavar=("CONFIG", "CHECKPOINT"))
parser.add_argument("--coarse", nargs=2, required=True, metavar=("CONFIG", "CHECKPOINT"))
parser.add_argument("--native_weights", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25, 0.0])
parser.add_argument("--native_sigmas", type=float, nargs="+", default=[0.0], help="smoothings of the native map (px)")
parser.add_argument("--output", required=True)
args = parser.parse_args()


def load(config_path: str, checkpoint: str) -> tuple[EfficientAdPlugin, Folder]:
    config = yaml.safe_load(open(config_path))
    model = EfficientAdPlugin(**config["model"]["init_args"])
    datamodule = Folder(**config["data"]["init_args"])
    engine = Engine(default_root_dir="results/ensemble_probe", logger=False, devices=1, accelerator="cpu",
                    enable_progress_bar=False)
    engine.validate(model, datamodule, ckpt_path=checkpoint)  # loads the snapshot, fits the map quantiles
    return model.eval(), datamodule


start = time.time()
native, datamodule = load(*args.native)
coarse, _ = load(*args.coarse)
blurs = {sigma: GaussianBlur2d(kernel_size=2 * int(4 * sigma + 0.5) + 1, sigma=sigma, channels=1)
         for sigma in args.native_sigmas if sigma > 0}
metrics = {(sigma, weight): (AUROC(fields=["anomaly_map", "gt_mask"]), AUPRO(fields=["anomaly_map", "gt_mask"]))
           for sigma in args.native_sigmas for weight in args.native_weights}
with torch.no_grad():
    for batch in datamodule.test_dataloader():
        masks = batch.gt_mask.reshape(batch.image.shape[0], *batch.image.shape[-2:]).int()
        native_map = native.model(batch.image).anomaly_map
        native_maps = {sigma: blurs[sigma](native_map) if sigma > 0 else native_map for sigma in args.native_sigmas}
        coarse.pre_processor.on_test_batch_start(None, coarse, batch, 0)  # resizes the batch to 256 px in place
        coarse_map = F.interpolate(coarse.model(batch.image).anomaly_map, size=masks.shape[-2:],
                                   mode="bilinear", align_corners=False)
        for (sigma, weight), (auroc, aupro) in metrics.items():
            combined = (weight * native_maps[sigma] + (1 - weight) * coarse_map).squeeze(1)
            namespace = SimpleNamespace(anomaly_map=combined, gt_mask=masks)
            auroc.update(namespace)
            aupro.update(namespace)
rows = [{"native_sigma_px": sigma, "native_weight": weight, "pixel_AUROC": float(auroc.compute()),
         "pixel_AUPRO": float(aupro.compute())}
        for (sigma, weight), (auroc, aupro) in metrics.items()]
result = {"native": args.native, "coarse": args.coarse, "rows": rows,
          "seconds": round(time.time() - start), "threads": torch.get_num_threads()}
print(json.dumps(result, indent=1))
json.dump(result, open(args.output, "w"), indent=1)
