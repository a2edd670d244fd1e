"""How fast the autoencoder learns the teacher on a CPU budget (issue 27, item 3): the autoencoder alone, trained on
magnetic_tile's training images with the model's own augmentation and loss term (L_AE), explained variance of the
normalised teacher features measured on held-out normal images every ``--every`` steps.

Variants: the paper's constant lr 1e-4; the fast preset's one-cycle to 1e-3; one-cycle to 3e-3; one-cycle to 1e-3
with 4 augmented views per step. Usage: python docs/autoencoder_budget/run.py --steps 400 --output <json>
"""
import argparse, json, random, time
from pathlib import Path

import torch
from torch.nn import functional as F

from efficientad_plugin.augmentation import random_color_adjustment
from efficientad_plugin.images import list_images, read_rgb
from efficientad_plugin.pdn import load_pdn_state_dict
from efficientad_plugin.schedules import one_cycle
from efficientad_plugin.teacher_weights import load_teacher_state_dict
from efficientad_plugin.torch_model import EfficientAdPluginModel

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="../shared/data/magnetic_tile/magnetic_tile/train/good")
parser.add_argument("--steps", type=int, default=400)
parser.add_argument("--every", type=int, default=100)
parser.add_argument("--teacher", default="LITE0_NATURAL2K_V3")
parser.add_argument("--variants", nargs="+", default=["paper_1e-4", "one_cycle_1e-3", "one_cycle_3e-3", "one_cycle_1e-3_x4"])
parser.add_argument("--output", required=True)
args = parser.parse_args()
torch.manual_seed(0)
paths = list_images(args.data)
random.Random(0).shuffle(paths)
held_out, train = paths[:40], paths[40:]


def load(path):
    return F.interpolate(read_rgb(path)[None], size=(256, 256), mode="bilinear", antialias=True)


validation = torch.cat([load(path) for path in held_out])
base = EfficientAdPluginModel()
state_dict, source = load_teacher_state_dict(args.teacher, "small")
load_pdn_state_dict(base.teacher, state_dict, source)
base.fit_teacher_statistics(load(path) for path in train[:200])
cache = {}


def image(index):
    if index not in cache:
        cache[index] = load(train[index % len(train)])
    return cache[index]


@torch.no_grad()
def explained(model):
    model.eval()
    values = [float(model.maps_and_learning(validation[i:i + 8])[2][:, 1].mean()) * len(validation[i:i + 8])
              for i in range(0, len(validation), 8)]
    model.train()
    return sum(values) / len(validation)


results = {"data": args.data, "teacher": args.teacher, "steps": args.steps, "machine": None, "variants": {}}
from efficientad_plugin.hardware import cpu_description
results["machine"] = cpu_description()
for variant in args.variants:
    torch.manual_seed(0)
    model = EfficientAdPluginModel()
    model.load_state_dict(base.state_dict())
    views = 4 if variant.endswith("_x4") else 1
    lr = float(variant.split("_")[-2 if views > 1 else -1])
    optimizer = torch.optim.Adam(model.autoencoder.parameters(), lr=lr, weight_decay=1e-5)
    scheduler = one_cycle(optimizer, lr, args.steps) if variant.startswith("one_cycle") else None
    curve, seconds = [{"step": 0, "explained_variance": explained(model), "seconds": 0.0}], 0.0
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(step)
        batch = torch.cat([random_color_adjustment(image(step * views + view), generator) for view in range(views)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            augmented = model._imagenet_normalise(batch)
            loss = (model._teacher_features(augmented) - model.autoencoder(augmented).float()).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seconds += time.perf_counter() - started
        if step % args.every == 0:
            curve.append({"step": step, "explained_variance": explained(model), "seconds": round(seconds, 1),
                          "loss": float(loss)})
            print(variant, curve[-1], flush=True)
    results["variants"][variant] = curve
    Path(args.output).write_text(json.dumps(results, indent=1))
