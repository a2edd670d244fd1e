"""Probe teacher features without training: nearest-neighbour image and pixel AUROC on an MVTec-layout category.

The probe itself is ``efficientad_plugin.distillation.probe``; this prints its results for each feature source.

example: efficientad-probe-features datasets/deeppcb_mini/pcb --features LITE0_NATURAL2K_V1 untrained lite0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from efficientad_plugin.cli import console_command
from efficientad_plugin.distillation.probe import BANK_PATCHES, feature_extractor, probe


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Probe each feature source on the category and print the AUROCs as JSON."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("category", type=Path, help="MVTec-layout category folder (train/good, test/*)")
    parser.add_argument("--features", nargs="+", required=True,
                        help="teacher weights (enum entry, .pth path or untrained) or lite0/lite1/lite2")
    parser.add_argument("--model-size", choices=("small", "medium"), default="small")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained PDN and the bank's subset")
    parser.add_argument("--image-size", type=int, help="resize images to this square (as the model does)")
    parser.add_argument("--bank-patches", type=int, default=BANK_PATCHES, help="patches in the memory bank")
    parser.add_argument("--train-images", type=int, help="seeded subset of training images for the bank")
    parser.add_argument("--test-images", type=int, help="seeded subset of test images (half normal)")
    parser.add_argument("--output", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    results = {}
    for features in args.features:
        torch.manual_seed(args.seed)
        results[features] = probe(args.category, feature_extractor(features, args.model_size), args.seed,
                                  image_size=args.image_size, bank_patches=args.bank_patches,
                                  train_images=args.train_images, test_images=args.test_images)
        print(features, results[features], flush=True)
    print(json.dumps(results, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2))
    return results


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
