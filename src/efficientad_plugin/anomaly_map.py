"""Anomaly maps of the student-teacher and autoencoder branches, and their quantile normalisation (paper §3.4)."""

from __future__ import annotations

import torch
from anomalib.models.components import GaussianBlur2d
from torch import nn
from torch.nn import functional as F  # noqa: N812

QUANTILE_START = 0.9  # q_a, mapped to 0
QUANTILE_END = 0.995  # q_b, mapped to 0.1
MAP_PADDING = 4  # the unpadded PDN output misses 16 input px per side: 4 px at its stride of 4
PAPER_BRANCH_WEIGHTS = (0.5, 0.5)  # (local, global): the paper's average of the two normalised maps


def check_smoothing_sigma(sigma: float) -> float:
    """``sigma`` if it is a valid ``map_smoothing_sigma`` (0 or a positive number of pixels), else a clear error."""
    if not sigma >= 0:  # also refuses NaN
        msg = (f"map_smoothing_sigma must be 0 (no smoothing, the paper) or a positive number of pixels, got {sigma}; "
               "anomalib's PatchCore smooths its maps with 4.")
        raise ValueError(msg)
    return float(sigma)


def channel_mean_squared_error(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean over channels of the squared difference: ``[B, C, h, w]`` -> ``[B, 1, h, w]``."""
    return (first - second).pow(2).mean(dim=1, keepdim=True)


def exact_quantiles(values: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Quantiles with linear interpolation, as ``torch.quantile``, without its input-size limit or subsampling."""
    ordered = values.flatten().double().sort().values
    positions = torch.tensor(quantiles, dtype=torch.float64) * (ordered.numel() - 1)
    lower = positions.floor().long()
    upper = positions.ceil().long()
    weight = (positions - lower).to(ordered.device)
    return (ordered[lower] + (ordered[upper] - ordered[lower]) * weight).float()


class AnomalyMapGenerator(nn.Module):
    """Normalises both maps so that their q_a -> 0 and q_b -> 0.1, weights and adds them, pads and upsamples.

    The quantiles and the branch weights are buffers: fitted once after training, saved in checkpoints and
    constants in exports. The quantiles start as NaN so that an unfitted model cannot pass for a fitted one; the
    weights start as the paper's 0.5 / 0.5 (``branch_weights`` in ``lightning_model`` may change them).
    With ``native`` the two maps come on different grids (the local one from the image at its own size, the global
    one from the image at ``image_size``): each is upsampled to the image's size before they are combined, which
    for maps on one grid gives the same map as combining first (padding and bilinear upsampling are linear).
    ``smoothing_sigma`` (pixels of the map at the image's size) sets a Gaussian that ``smooth`` applies to a finished
    map, as anomalib's PatchCore smooths its maps (sigma 4); 0 (the paper) smooths nothing. Its kernel follows from
    the sigma and stays out of the state dict, so the smoothing of a trained model can be changed.
    """

    def __init__(self, native: bool = False, smoothing_sigma: float = 0.0) -> None:
        super().__init__()
        self.native = native
        self.smoothing_sigma = check_smoothing_sigma(smoothing_sigma)
        self.blur: GaussianBlur2d | None = None
        if smoothing_sigma > 0:
            # anomalib's blur (reflect padding, kernel of +-4 sigma), exportable with dynamic H/W
            self.blur = GaussianBlur2d(sigma=smoothing_sigma, channels=1)
            self.blur.register_buffer("kernel", self.blur.kernel, persistent=False)
        self.register_buffer("st_quantiles", torch.full((2,), torch.nan))
        self.register_buffer("ae_quantiles", torch.full((2,), torch.nan))
        self.register_buffer("branch_weights", torch.tensor(PAPER_BRANCH_WEIGHTS))

    @property
    def is_fitted(self) -> bool:
        """Whether the quantiles have been fitted."""
        return not bool(torch.isnan(self.st_quantiles).any() or torch.isnan(self.ae_quantiles).any())

    @torch.no_grad()
    def fit(self, st_maps: torch.Tensor, ae_maps: torch.Tensor) -> None:
        """Fit q_a and q_b of each branch on raw (unpadded) maps of normal images."""
        for maps, buffer in ((st_maps, self.st_quantiles), (ae_maps, self.ae_quantiles)):
            quantiles = exact_quantiles(maps, (QUANTILE_START, QUANTILE_END))
            if not bool(quantiles[1] > quantiles[0]):
                msg = f"Cannot normalise anomaly maps: q_a = q_b = {float(quantiles[0]):.3g} on the validation images."
                raise ValueError(msg)
            buffer.copy_(quantiles.to(buffer.device))

    @staticmethod
    def _normalise(anomaly_map: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
        return 0.1 * (anomaly_map - quantiles[0]) / (quantiles[1] - quantiles[0])

    def set_branch_weights(self, local: float, global_: float) -> None:
        """Weights of the normalised local (student-teacher) and global (autoencoder) maps in the anomaly map."""
        if min(local, global_) < 0 or local + global_ <= 0:
            msg = f"Branch weights must be non-negative and not both zero, got local={local}, global={global_}."
            raise ValueError(msg)
        self.branch_weights.copy_(torch.tensor((local, global_), dtype=self.branch_weights.dtype))

    def normalised(self, st_map: torch.Tensor, ae_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both raw maps normalised (q_a -> 0, q_b -> 0.1) on their own grid, unweighted: ``(local, global)``."""
        return self._normalise(st_map, self.st_quantiles), self._normalise(ae_map, self.ae_quantiles)

    @staticmethod
    def _to_image(anomaly_map: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(F.pad(anomaly_map, [MAP_PADDING] * 4), size=image_size, mode="bilinear")

    def smooth(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """``anomaly_map`` ``[B, 1, H, W]`` smoothed with ``smoothing_sigma`` (unchanged when it is 0)."""
        return anomaly_map if self.blur is None else self.blur(anomaly_map)

    def branch_maps(self, st_map: torch.Tensor, ae_map: torch.Tensor,
                    image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each branch's normalised map at the image's size, unweighted: ``(local, global)``, each ``[B, 1, H, W]``.

        For measuring each branch alone; the anomaly map is their sum weighted by ``branch_weights``.
        """
        local, global_ = self.normalised(st_map, ae_map)
        return self._to_image(local, image_size), self._to_image(global_, image_size)

    def forward(self, st_map: torch.Tensor, ae_map: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Combine raw branch maps ``[B, 1, h, w]`` into the anomaly map ``[B, 1, H, W]``."""
        local, global_ = self.normalised(st_map, ae_map)
        if self.native:
            local, global_ = self._to_image(local, image_size), self._to_image(global_, image_size)
            return self.branch_weights[0] * local + self.branch_weights[1] * global_
        return self._to_image(self.branch_weights[0] * local + self.branch_weights[1] * global_, image_size)


def add_missing_branch_weights(state_dict: dict[str, torch.Tensor], prefix: str) -> None:
    """Give a state dict saved before branch weights existed the paper's 0.5 / 0.5, which it was trained with.

    ``prefix`` is the generator's key prefix (``model.anomaly_map_generator.`` in a Lightning checkpoint). Only a
    state dict that has the generator's quantiles gets the weights, so that a partial state dict stays partial.
    """
    if f"{prefix}st_quantiles" in state_dict and f"{prefix}branch_weights" not in state_dict:
        state_dict[f"{prefix}branch_weights"] = torch.tensor(PAPER_BRANCH_WEIGHTS)
