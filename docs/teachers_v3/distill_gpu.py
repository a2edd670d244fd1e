"""Teacher distillation on the lent GPU (device tool), V3 recipe: paper resolution, one-cycle, as many steps as fit.

The GPU machine has torch/lightning/timm but not anomalib; the distillation needs none of anomalib, so the package's
__init__ (which registers the model with anomalib) is bypassed and anomalib.data is stubbed for one type name.
"""
import json, os, sys, time, types
T0 = time.time()
BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 500.0  # seconds for everything in this script
OUT = os.environ.get("OUT", "/tmp/out")
pkg = types.ModuleType("efficientad_plugin"); pkg.__path__ = [os.path.abspath("src/efficientad_plugin")]
anomalib = types.ModuleType("anomalib"); anomalib.__path__ = []
anomalib_data = types.ModuleType("anomalib.data"); anomalib_data.InferenceBatch = tuple
anomalib_data.__path__ = []
import hashlib
download = types.ModuleType("anomalib.data.utils.download")
download.generate_hash = lambda path, algorithm="sha256": hashlib.new(algorithm, open(path, "rb").read()).hexdigest()
sys.modules.update({"efficientad_plugin": pkg, "anomalib": anomalib, "anomalib.data": anomalib_data,
                    "anomalib.data.utils": types.ModuleType("anomalib.data.utils"), "anomalib.data.utils.download": download})
import logging
import torch
from efficientad_plugin.distillation import DistillationConfig, distill
logging.basicConfig(level=logging.INFO)
cuda = torch.cuda.is_available()
images = os.path.abspath(".devdata/natural")
common = dict(images=images, backbone="tf_efficientnet_lite0", backbone_weights=os.path.abspath(".devdata/lite0_fp16.pth"),
              crop_size=None if cuda else 64, batch_size=16, lr=float(os.environ.get("LR", "1e-3")), schedule="one_cycle", init_weights=os.environ.get("INIT"), precision="auto",
              num_workers=min(14, (os.cpu_count() or 2) - 1), checkpoint_every=2000 if cuda else 2, seed=0,
              statistics_images=1000 if cuda else 32)
cal_steps = 300 if cuda else 3
t = time.time()
distill(DistillationConfig(steps=cal_steps, **common), "/tmp/cal/cal.pth", progress=False)
cal = json.load(open("/tmp/cal/cal.json"))
rate = cal["image_steps_per_second"] / 16
print(f"calibration: {rate:.1f} steps/s, call {time.time() - t:.0f} s", flush=True)
remaining = BUDGET - (time.time() - T0) - 45  # statistics, start-up, saving
steps = max(10, int(rate * remaining * 0.92 / 100) * 100) if cuda else 4
print(f"main run: {steps} steps in about {remaining:.0f} s", flush=True)
import shutil
try:
    out = distill(DistillationConfig(steps=steps, **common), "/tmp/v3/pdn_small_lite0_natural2k_" + os.environ.get("NAME", "v3") + ".pth", progress=False,
                  max_minutes=remaining / 60)
finally:
    os.makedirs(OUT, exist_ok=True)
    for path in __import__("glob").glob("/tmp/v3/pdn_small_lite0_natural2k_" + os.environ.get("NAME", "v3") + ".*"):
        shutil.copy(path, OUT)
print(json.dumps({k: v for k, v in json.load(open(out.with_suffix(".json"))).items() if k != "legs"}, indent=1))
print(f"total {time.time() - T0:.0f} s")
