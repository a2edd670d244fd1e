"""PNG figures for the report: histograms and image/heat-map galleries (matplotlib without pyplot's global state)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DPI = 90


@dataclass(frozen=True)
class GalleryItem:
    """One gallery column: an RGB image ``[H, W, 3]`` in [0, 1], its anomaly map ``[H, W]`` and a title."""

    image: np.ndarray
    anomaly_map: np.ndarray
    title: str


def _png(figure: object) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def histogram_png(groups: Mapping[str, Sequence[float]], xlabel: str, markers: Mapping[str, float] | None = None,
                  log_x: bool = False) -> bytes:
    """Overlaid histograms of each group's values on shared bins, with labelled vertical lines at ``markers``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5), layout="constrained")
    axis = figure.add_subplot()
    values = np.concatenate([np.asarray(group, dtype=float) for group in groups.values() if len(group)] or [[0.0]])
    low, high = float(values.min()), float(values.max())
    if log_x:
        low = max(low, 1e-2)
        bins = np.geomspace(low, max(high, low * 1.01), 30)
        axis.set_xscale("log")
    else:
        bins = np.linspace(low, high if high > low else low + 1.0, 30)
    for name, group in groups.items():
        if len(group):
            axis.hist(np.clip(group, bins[0], bins[-1]), bins=bins, alpha=0.55, label=f"{name} ({len(group)})")
    for index, (name, position) in enumerate((markers or {}).items()):
        axis.axvline(position, color=f"C{index + 3}", linestyle="--", label=name)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    axis.legend(fontsize="small")
    return _png(figure)


def gallery_png(items: Sequence[GalleryItem], vmax: float) -> bytes:
    """Images in the top row and their anomaly maps over them below, all maps on one colour scale [0, ``vmax``]."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.4 * max(len(items), 1), 5.2), layout="constrained")
    axes = figure.subplots(2, max(len(items), 1), squeeze=False)
    for column, item in enumerate(items):
        axes[0, column].imshow(item.image)
        axes[0, column].set_title(item.title, fontsize="small")
        axes[1, column].imshow(item.image)
        heat = axes[1, column].imshow(item.anomaly_map, cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax)
    for axis in axes.flat:
        axis.axis("off")
    if items:
        figure.colorbar(heat, ax=axes[1, :].tolist(), shrink=0.8, label="anomaly map")
    return _png(figure)
