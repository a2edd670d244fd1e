"""Does the native map lose AU-PRO to DeepPCB's box masks? (issue 28)

DeepPCB marks each defect with a box (median 39 px at 640 px) around a much thinner defect. The native local map
marks the defect itself, about as wide as the PDN's 33-px patch; the 256-px model's map, upsampled 2.5x, is 2.5x as
wide. AU-PRO averages, per box, the share of its pixels above each threshold, so it may prefer the wider map. This
probe scores one snapshot's test maps as they are and smoothed by the Gaussian anomalib's PatchCore applies to its
maps (sigma 4 px, fixed beforehand, not chosen on these images), and reports pixel AUROC and AU-PRO of each.

Usage: python docs/native_resolution/smoothing_probe.py --config configs/convergence/pcb_native_native.yaml \
    --checkpoint results/convergence/pcb_native/fast_native/snapshots/step_500.ckpt --output <json>
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

from efficientad_plugin import EfficientAdPlugin

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--checkpoint", required=True)
parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 4.0])
parser.add_argument("--output", required=True)
args = parser.parse_args()
config = yaml.safe_load(open(args.config))
model = EfficientAdPlugin(**config["model"]["init_args"])
datamodule = Folder(**config["data"]["init_args"])
engine = Engine(default_root_dir="results/smoothing_probe", logger=False, devices=1, accelerator="cpu",
                enable_progress_bar=False)
start = time.time()
engine.validate(model, datamodule, ckpt_path=args.checkpoint)  # loads the snapshot, fits the map quantiles
model.eval()
metrics = {sigma: (AUROC(fields=["anomaly_map", "gt_mask"]), AUPRO(fields=["anomaly_map", "gt_mask"]))
           for sigma in args.sigmas}
blurs = {sigma: GaussianBlur2d(kernel_size=2 * int(4 * sigma + 0.5) + 1, sigma=sigma, channels=1)
         for sigma in args.sigmas if sigma > 0}
with torch.no_grad():
    for batch in datamodule.test_dataloader():
        # The 256-px model's pre-processor resizes image and mask as in anomalib's test loop; native mode's keeps them.
        model.pre_processor.on_test_batch_start(None, model, batch, 0)
        anomaly_map = model.model(batch.image).anomaly_map
        for sigma, (auroc, aupro) in metrics.items():
            smoothed = blurs[sigma](anomaly_map) if sigma > 0 else anomaly_map
            pixels = smoothed.squeeze(1)
            namespace = SimpleNamespace(anomaly_map=pixels, gt_mask=batch.gt_mask.reshape(pixels.shape).int())
            auroc.update(namespace)
            aupro.update(namespace)
rows = [{"sigma_px": sigma, "pixel_AUROC": float(auroc.compute()), "pixel_AUPRO": float(aupro.compute())}
        for sigma, (auroc, aupro) in metrics.items()]
result = {"config": args.config, "checkpoint": args.checkpoint, "rows": rows, "seconds": round(time.time() - start),
          "threads": torch.get_num_threads()}
print(json.dumps(result, indent=1))
json.dump(result, open(args.output, "w"), indent=1)
