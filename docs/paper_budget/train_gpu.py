"""The paper's recipe on magnetic_tile towards the paper's 70,000 steps, on the lent GPU (device tool): issue 27, item 3.

Question: how many steps does the autoencoder need before it explains half of the normalised teacher features'
variance on normal validation images (the `auto` rule's switch to the paper's average), and what image AUROC do the
local, global and averaged maps reach on the way?

Same networks, losses, colour augmentation and penalty draws as EfficientAdPlugin.training_step (the package's own
functions), Adam 1e-4 / weight decay 1e-5 and x0.1 at 95 % of 70,000 steps as in the paper, fp32 (TF32 convolutions),
V3 teacher, bundled penalty set, seed 0. The GPU machine has no anomalib: the package's __init__ is bypassed and the
few anomalib names the imported modules use are stubbed, so this is a plain loop, not Lightning (an experiment driver,
not shipped code). Data: .devdata/magnetic/<split>/*.jpg, magnetic_tile resized to 256 px here as anomalib's
pre-processor does (torchvision antialiased resize) and saved as JPEG q95; validation = 10 % of train/good (seed 0);
test = all 190 good and 392 defective images.

    python docs/paper_budget/train_gpu.py BUDGET_SECONDS   # writes $OUT/paper_budget.json as it goes
"""
import json
import os
import sys
import time
import types
from pathlib import Path

T0 = time.time()
BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 500.0
MAX_STEPS = int(os.environ.get("MAX_STEPS", "70000"))
OUT = Path(os.environ.get("OUT", "/tmp/out"))
pkg = types.ModuleType("efficientad_plugin")
pkg.__path__ = [os.path.abspath("src/efficientad_plugin")]
anomalib = types.ModuleType("anomalib")
anomalib.__path__ = []
anomalib_data = types.ModuleType("anomalib.data")
anomalib_data.__path__ = []
anomalib_data.InferenceBatch = dict
anomalib_utils = types.ModuleType("anomalib.data.utils")
anomalib_utils.__path__ = []
anomalib_utils.ValSplitMode = type("ValSplitMode", (), {})
download = types.ModuleType("anomalib.data.utils.download")
download.generate_hash = lambda path, algorithm="sha256": __import__("hashlib").new(
    algorithm, Path(path).read_bytes()).hexdigest()
sys.modules.update({"efficientad_plugin": pkg, "anomalib": anomalib, "anomalib.data": anomalib_data,
                    "anomalib.data.utils": anomalib_utils, "anomalib.data.utils.download": download})

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from efficientad_plugin.augmentation import random_color_adjustment  # noqa: E402
from efficientad_plugin.branches import branch_scores, image_aurocs  # noqa: E402
from efficientad_plugin.images import read_rgb  # noqa: E402
from efficientad_plugin.loss import EfficientAdLoss  # noqa: E402
from efficientad_plugin.pdn import load_pdn_state_dict  # noqa: E402
from efficientad_plugin.penalty import GRAYSCALE_PROBABILITY, list_images, resolve_penalty_dir  # noqa: E402
from efficientad_plugin.randomness import AUGMENTATION_STREAM, PENALTY_STREAM, step_generator  # noqa: E402
from efficientad_plugin.schedules import paper_step_decay  # noqa: E402
from efficientad_plugin.teacher_weights import load_teacher_state_dict  # noqa: E402
from efficientad_plugin.torch_model import EfficientAdPluginModel  # noqa: E402

SEED = 0
EVALUATE_AT = {250, 500, 1000, 2000, 3500, 5000, 7500, 10000, 15000, 20000, 25000, 30000, 40000, 50000, 60000, 66500,
               70000}
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.manual_seed(SEED)


SMOKE = os.environ.get("SMOKE") == "1"  # a few images of each split: checks the script on a CPU in a minute


def load(folder: str) -> torch.Tensor:
    paths = sorted(Path(".devdata/magnetic", folder).glob("*.jpg"))[: 12 if SMOKE else None]
    gray = torch.stack([TF.pil_to_tensor(Image.open(p).convert("L")) for p in paths])
    return gray.expand(-1, 3, -1, -1).to(device, torch.float32) / 255


train_all = load("train")
order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(SEED))
n_val = round(0.1 * len(train_all))
val, train = train_all[order[:n_val]], train_all[order[n_val:]]
good = load("test_good")
defects = torch.cat([load(f"test_{kind}") for kind in ("blowhole", "break", "crack", "fray", "uneven")])
print(f"train {len(train)}, validation {len(val)}, test {len(good)} good + {len(defects)} defective", flush=True)

model = EfficientAdPluginModel("small", (256, 256)).to(device)
state_dict, description = load_teacher_state_dict("LITE0_NATURAL2K_V3", "small")
load_pdn_state_dict(model.teacher, state_dict, description)
model.fit_teacher_statistics(train.split(32))
# the penalty images resized once (PenaltyImages.sample resizes the same file at every step; the draws are the same)
penalty_folder = resolve_penalty_dir("bundled")
penalty = [TF.resize(read_rgb(path), [512, 512], antialias=True).to(device) for path in list_images(penalty_folder)]


def penalty_image(step: int) -> torch.Tensor:
    generator = step_generator(SEED, step, PENALTY_STREAM)
    index = int(torch.randint(len(penalty), (1,), generator=generator))
    image = penalty[index]
    if bool(torch.rand(1, generator=generator) < GRAYSCALE_PROBABILITY):
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    return TF.center_crop(image, [256, 256]).unsqueeze(0)


@torch.no_grad()
def evaluate(step: int) -> dict:
    model.eval()
    st, ae, learnt = (torch.cat(parts) for parts in zip(*(model.maps_and_learning(b) for b in val.split(38))))
    generator = model.anomaly_map_generator
    generator.fit(st, ae)
    row = {"step": step, "student_explained_variance": float(learnt[:, 0].mean()),
           "autoencoder_explained_variance": float(learnt[:, 1].mean())}
    scores = {}
    for name, images in (("normal", good), ("anomalous", defects)):
        parts = [branch_scores(*generator.normalised(*model.raw_maps(b))) for b in images.split(64)]
        scores[name] = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    row.update({f"{key}_image_AUROC": value for key, value in image_aurocs(scores["normal"],
                                                                          scores["anomalous"]).items()})
    model.train()
    model.teacher.eval()
    return row


model.train()
model.teacher.eval()
criterion = EfficientAdLoss()
optimizer = torch.optim.Adam([*model.student.parameters(), *model.autoencoder.parameters()], lr=1e-4,
                             weight_decay=1e-5)
scheduler = paper_step_decay(optimizer, MAX_STEPS)
results = {"recipe": "paper (Adam 1e-4, wd 1e-5, x0.1 at 95 % of 70,000), fp32/TF32, V3 teacher, bundled penalty",
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "max_steps": MAX_STEPS,
           "rows": [], "losses": []}
OUT.mkdir(parents=True, exist_ok=True)


def save() -> None:
    (OUT / "paper_budget.json").write_text(json.dumps(results, indent=1))


epoch_order: list[int] = []
running = torch.zeros(4, device=device)
t_train, step, eval_seconds = time.time(), 0, 0.0
while step < MAX_STEPS:
    if not epoch_order:
        epoch_order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SEED + step)).tolist()
    image = train[epoch_order.pop()].unsqueeze(0)
    augmented = random_color_adjustment(image, step_generator(SEED, step, AUGMENTATION_STREAM))
    losses = criterion(model.training_features(image, augmented, penalty_image(step)))
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    scheduler.step()
    running += torch.stack([losses[k].detach() for k in ("loss_hard", "loss_penalty", "loss_ae", "loss_stae")])
    step += 1
    if step % 250 == 0:
        results["losses"].append({"step": step, **dict(zip(("hard", "penalty", "ae", "stae"),
                                                           (running / 250).tolist()))})
        running.zero_()
    if step in EVALUATE_AT or step == MAX_STEPS:
        t = time.time()
        row = evaluate(step)
        eval_seconds += time.time() - t
        row["train_seconds"] = round(time.time() - t_train - eval_seconds, 1)
        results["rows"].append(row)
        save()
        print(json.dumps(row), flush=True)
    if step == 200:
        torch.cuda.synchronize() if device.type == "cuda" else None
        per_step = (time.time() - t_train) / step
        print(f"{per_step * 1000:.1f} ms/step; {MAX_STEPS} steps would take {per_step * MAX_STEPS:.0f} s", flush=True)
    if time.time() - T0 > BUDGET:
        print(f"budget reached at step {step}", flush=True)
        row = evaluate(step)
        row["train_seconds"] = round(time.time() - t_train - eval_seconds, 1)
        results["rows"].append(row)
        break
results["stopped_at"] = step
save()
print(f"total {time.time() - T0:.0f} s")
