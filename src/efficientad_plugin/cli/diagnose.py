"""Why does EfficientAD not work on my parts? A report on your data and, optionally, your trained checkpoint.

Data checks: images per split; sizes, aspect ratios and modes; unusable (corrupt, 16-bit, tiny) and duplicate
files; test images reused in training or validation; how the resize to image_size stretches and shrinks them;
defect sizes from the masks against the PDN's 33x33 patch; too few normal images; the validation split.
Model checks (--checkpoint): steps against the paper's 70,000 and the learning-rate decay; the teacher; the
fitted quantiles; score histograms; local vs global map per defect type; the worst false positives and false
negatives; anomaly mass at the image borders. Writes report.html (images embedded) and summary.json.

example: efficientad-diagnose configs/pcb_quickstart.yaml \
    --checkpoint results/EfficientAdPlugin/MVTecAD/pcb/latest/weights/lightning/model.ckpt --output diagnosis/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from efficientad_plugin.cli import console_command
from efficientad_plugin.diagnosis import diagnose
from efficientad_plugin.diagnosis.diagnose import MAX_TRAIN_IMAGES


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the checks, write the report and print the findings; return the JSON summary."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path,
                        help="anomalib config (.yaml with data.class_path/init_args), an MVTec-layout category "
                             "folder, or a folder of normal images")
    parser.add_argument("--checkpoint", type=Path, help="trained EfficientAdPlugin model.ckpt for the model checks")
    parser.add_argument("--image-size", type=int, nargs="+", metavar="SIDE",
                        help="height [width] for the data checks (default: the checkpoint's, the config's, 256)")
    parser.add_argument("--output", type=Path, default=Path("diagnosis"), help="folder for report.html, summary.json")
    parser.add_argument("--max-train-images", type=int, default=MAX_TRAIN_IMAGES,
                        help="training images scored for the histogram (evenly spaced); all test images are scored")
    parser.add_argument("--config", action=ActionConfigFile, help="read these options from a YAML/JSON file")
    args = parser.parse_args(argv)
    if args.image_size and len(args.image_size) > 2:
        parser.error("--image-size takes one side (square) or height and width")
    image_size = tuple(args.image_size * 2)[:2] if args.image_size else None
    diagnosis = diagnose(args.source, args.checkpoint, image_size, args.max_train_images)
    page, summary_file = diagnosis.write(args.output)
    for finding in diagnosis.findings:
        print(f"[{finding.severity.value}] {finding.check}: {finding.message}\n    -> {finding.suggestion}")
    print(f"report: {page}\nsummary: {summary_file}")
    return diagnosis.summary()


command = console_command(main)

if __name__ == "__main__":
    sys.exit(command())
