"""Rebuild the small default penalty set shipped in the package from scikit-image's sample photos.

Every source photo is public domain or CC0 (see the scikit-image ``skimage.data`` docstrings, copied into
``src/efficientad_plugin/assets/penalty_images/SOURCES.md``). The paper uses ImageNet; any larger folder of natural
images (ImageNet, Imagenette) is a better penalty set than this one and is passed with ``penalty_dir``.

    python tools/build_bundled_penalty_set.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = {  # skimage.data function: licence as stated in its docstring
    "astronaut": "public domain (NASA)",
    "camera": "CC0 (Lav Varshney)",
    "brick": "CC0 (CC0Textures Bricks25)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures Gravel04)",
    "coins": "public domain (Walters Art Museum)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "hubble_deep_field": "public domain (NASA)",
    "rocket": "public domain (SpaceX)",
}
CROPS_PER_PHOTO = 6
SHORT_SIDE = 320
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "efficientad_plugin" / "assets" / "penalty_images"


def main(argv: list[str] | None = None) -> None:
    """Write ``CROPS_PER_PHOTO`` random crops (35-100 % of the shorter side) of each photo, short side 320 px."""
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from skimage import data

    rng = np.random.default_rng(0)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        photo = Image.fromarray(getattr(data, name)())
        for index in range(CROPS_PER_PHOTO):
            side = int(min(photo.size) * rng.uniform(0.35, 1.0))
            left = int(rng.integers(0, photo.width - side + 1))
            top = int(rng.integers(0, photo.height - side + 1))
            crop = photo.crop((left, top, left + side, top + side)).resize((SHORT_SIDE, SHORT_SIDE), Image.BICUBIC)
            crop.convert("RGB" if crop.mode != "L" else "L").save(OUTPUT / f"{name}_{index}.jpg", quality=85)
    lines = [
        "# Sources of the bundled penalty images",
        "",
        "Random crops of scikit-image sample photos (`skimage.data`), made by `tools/build_bundled_penalty_set.py`.",
        "",
        "| photo | licence |",
        "|---|---|",
        *(f"| `{name}` | {licence} |" for name, licence in SOURCES.items()),
    ]
    (OUTPUT / "SOURCES.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
