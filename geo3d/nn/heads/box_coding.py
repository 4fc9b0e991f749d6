"""Box coding of the vote heads: heading bins + residuals, size classes (class mean sizes) + residuals.

Boxes are ``(cx, cy, cz, dx, dy, dz, yaw)`` as in :mod:`geo3d.ops.boxes`. Heading bins: ``NH`` bins over
``[0, 2pi)`` centred at ``k 2pi/NH`` (bin 0 takes yaws just below ``2pi`` too), residual normalised by
``pi/NH`` to ``[-1, 1)``. Sizes: size class = semantic class, residual normalised by the class mean size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def angle_to_class(yaw: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Yaw -> (bin ``[...]`` int64, residual normalised to ``[-1, 1)``), bins centred at ``k 2pi/NH``."""
    width = 2 * math.pi / num_bins
    shifted = torch.remainder(yaw + width / 2, 2 * math.pi)
    cls = torch.floor(shifted / width).long().clamp(0, num_bins - 1)
    residual = (shifted - cls * width - width / 2) / (width / 2)
    return cls, residual.clamp(-1.0, 1.0)  # the clamp only absorbs round-off at bin edges


def class_to_angle(cls: Tensor, residual: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`angle_to_class`: yaw in ``[0, 2pi)``."""
    width = 2 * math.pi / num_bins
    return torch.remainder(cls * width + residual * (width / 2), 2 * math.pi)


def encode_boxes(
    boxes: Tensor, labels: Tensor, mean_sizes: Tensor, num_heading_bins: int
) -> dict[str, Tensor]:
    """Boxes ``[M, 7]`` and labels ``[M]`` in the head's parameterisation.

    Returns ``center [M, 3]``, ``heading_class [M]``, ``heading_residual [M]``
    (normalised), ``size_class [M]`` (= label) and ``size_residual [M, 3]``
    (normalised by the class mean size).
    """
    labels = labels.long()
    hcls, hres = angle_to_class(boxes[:, 6], num_heading_bins)
    mean = mean_sizes.to(boxes)[labels]
    return {
        "center": boxes[:, :3],
        "heading_class": hcls,
        "heading_residual": hres,
        "size_class": labels,
        "size_residual": (boxes[:, 3:6] - mean) / mean,
    }


def decode_boxes(
    center: Tensor,
    heading_class: Tensor,
    heading_residual: Tensor,
    size_class: Tensor,
    size_residual: Tensor,
    mean_sizes: Tensor,
    num_heading_bins: int,
) -> Tensor:
    """Inverse of :func:`encode_boxes`: ``center [..., 3]`` etc. -> boxes ``[..., 7]``."""
    mean = mean_sizes.to(center)[size_class]
    size = mean * (1 + size_residual)
    yaw = class_to_angle(heading_class, heading_residual, num_heading_bins)
    return torch.cat([center, size, yaw[..., None]], dim=-1)


def most_likely_boxes(outputs: dict[str, Tensor], mean_sizes: Tensor) -> Tensor:
    """Boxes ``[B, P, 7]`` from each proposal's most likely heading bin and size class (with residuals)."""
    nh = outputs["heading_logits"].shape[-1]
    hcls = outputs["heading_logits"].argmax(-1)
    hres = torch.gather(outputs["heading_residuals"], -1, hcls[..., None])[..., 0]
    scls = outputs["size_logits"].argmax(-1)
    idx = scls[..., None, None].expand(-1, -1, 1, 3)
    sres = torch.gather(outputs["size_residuals"], 2, idx)[:, :, 0]
    return decode_boxes(outputs["center"], hcls, hres, scls, sres, mean_sizes, nh)


def check_mean_sizes(mean_sizes: Tensor | Sequence[Sequence[float]], num_classes: int) -> Tensor:
    """``mean_sizes`` as a float32 ``[NC, 3]`` tensor of positive sizes, or a ValueError saying why not."""
    mean = torch.as_tensor(mean_sizes, dtype=torch.float32)
    if mean.shape != (num_classes, 3) or not bool((mean > 0).all()):
        raise ValueError(
            f"mean_sizes must be [num_classes={num_classes}, 3] and > 0, got {tuple(mean.shape)}"
        )
    return mean


def split_box_parameters(out: Tensor, num_heading_bins: int, num_classes: int) -> dict[str, Tensor]:
    """The heading, size and class blocks of a proposal output ``out [B, P, 2NH + 5NC]`` by name."""
    nh, nc = num_heading_bins, num_classes
    o = 2 * nh
    return {
        "heading_logits": out[..., :nh],
        "heading_residuals": out[..., nh:o],
        "size_logits": out[..., o : o + nc],
        "size_residuals": out[..., o + nc : o + 4 * nc].reshape(*out.shape[:-1], nc, 3),
        "sem_logits": out[..., o + 4 * nc :],
    }
