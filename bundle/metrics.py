"""Mask-quality metrics that Dice does not show: enclosed holes and edges stuck on the token grid.

SAM's decoder predicts at a quarter of the model input and upsamples with non-overlapping 2x2
transposed convolutions per embedding token. When those weights lose their pretrained sub-token
detail, mask edges snap to the borders of the token grid (blocky masks); an edge that follows
anatomy falls on a token border only by chance (about 1 in ``pitch`` of the edges, ``pitch`` the
token size in original pixels). Both metrics are MONAI ``CumulativeIterationMetric`` s, so
``IgniteMetricHandler`` and ``MetricsSaver`` report them per case like Dice.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from scipy import ndimage


def enclosed_holes(mask: np.ndarray) -> int:
    """Number of background components of a binary mask that do not touch the image border."""
    background, count = ndimage.label(~mask.astype(bool))
    if count == 0:
        return 0
    border = np.zeros_like(mask, dtype=bool)
    for axis in range(mask.ndim):
        index = [slice(None)] * mask.ndim
        for end in (0, -1):
            index[axis] = end
            border[tuple(index)] = True
    open_labels = set(np.unique(background[border]).tolist()) - {0}
    return count - len(open_labels)


def token_border_edge_share(mask: np.ndarray, pitch: float) -> float:
    """Share of a binary 2D mask's edges lying on the borders of a token grid of ``pitch`` pixels.

    An edge between pixels i and i+1 lies at coordinate i+1; it is on a token border when that
    coordinate is within half a pixel of a multiple of ``pitch``. NaN for a mask without edges.
    """
    m = mask.astype(bool)
    on_border, total = 0, 0
    for axis in range(2):
        edges = np.diff(m, axis=axis)  # True where pixel i and i+1 differ
        positions = np.nonzero(edges)[axis] + 1.0
        phase = positions / pitch
        on_border += int(np.sum(np.abs(phase - np.round(phase)) * pitch < 0.5))
        total += positions.size
    return float("nan") if total == 0 else on_border / total


class _PerCaseMetric(CumulativeIterationMetric):
    """Per-case value of one-hot predictions B x (C+1) x spatial, summed or averaged over classes."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__()
        self.reduction = reduction

    def _case(self, classes: np.ndarray) -> float:  # classes: C x spatial, foreground only
        raise NotImplementedError

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pred = y_pred.detach().cpu().numpy() > 0.5
        return torch.tensor([[self._case(case[1:])] for case in pred], dtype=torch.float32)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor.")
        f, _ = do_metric_reduction(data, reduction or self.reduction)
        return f


class EnclosedHolesMetric(_PerCaseMetric):
    """Enclosed holes per case, summed over the foreground classes."""

    def _case(self, classes: np.ndarray) -> float:
        return float(sum(enclosed_holes(c) for c in classes))


class TokenBorderEdgeMetric(_PerCaseMetric):
    """Share of a case's mask edges on the model's token grid (chance: about ``1 / pitch``).

    Args:
        grid: tokens along the model input's side (64 for SAM and LiteMedSAM); the original
            image's longest side was resized onto it, so the pitch is ``longest side / grid``.
    """

    def __init__(self, grid: int = 64, reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__(reduction)
        self.grid = int(grid)

    def _case(self, classes: np.ndarray) -> float:
        pitch = max(classes.shape[1:]) / self.grid
        shares = [token_border_edge_share(c, pitch) for c in classes if c.any()]
        return float(np.nanmean(shares)) if shares and not np.all(np.isnan(shares)) else float("nan")
