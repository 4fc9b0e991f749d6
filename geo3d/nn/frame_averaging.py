"""Frame Averaging over per-part PCA frames, and a PointNet run part by part under it.

Frame Averaging (Puny et al., ICLR 2022, https://arxiv.org/abs/2110.03336) makes
any network invariant or equivariant by averaging it over a small,
input-dependent set of frames. For a point set with centroid ``c`` and
covariance eigenvectors ``V`` (columns, ascending eigenvalues), the frames are
``{V diag(s) : s in S}``:

- ``"E3"``: all 8 sign patterns ``s in {+1, -1}^3`` (O(3) x translations);
- ``"SE3"``: ``V`` first made proper (``det V = +1``), then the 4 sign patterns
  with ``prod(s) = +1`` (SO(3) x translations; reflections are not symmetries).

With ``F`` a frame, an invariant output is ``1/|F| sum_F phi(F^T v)`` and a
vector output ``1/|F| sum_F F phi(F^T v)``. APEN (Atzmon et al., ICLR 2024)
applies this per part: every part has its own centroid and frame, so a rigid
motion of a part moves exactly that part's outputs. As in the APEN and FA code,
frames and centroids carry no gradient (``eigh`` derivatives blow up at near
degenerate spectra). When two eigenvalues of a part (nearly) coincide its frame
is not unique and equivariance holds only approximately; parts with fewer than
three non-collinear points have no frame at all (``eigh`` of a singular matrix
returns an arbitrary basis). ``part_frames`` returns the eigenvalues so that
callers can flag such parts.

The network is a PointNet (shared per-row MLP, pooled per group, broadcast back,
head MLP). Its rows are (point, frame) pairs, ``N * |F|`` of them, laid out
point-major; pooling is a scatter over the flat group id ``part * |F| + frame``.
Each point sits only in its own part's rows, so memory is ``O(N |F|)``, not
``O(N * parts * |F|)`` (the APEN code gets the same with MinkowskiEngine sparse
tensors).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from geo3d.ops.scatter import scatter

GROUPS = ("SE3", "E3")
_E3_SIGNS = tuple(itertools.product((1.0, -1.0), repeat=3))
_SE3_SIGNS = tuple(s for s in _E3_SIGNS if s[0] * s[1] * s[2] > 0)


def sign_patterns(group: str) -> Tensor:
    """The sign patterns ``[|F|, 3]`` multiplying the PCA axes: 4 for ``"SE3"``, 8 for ``"E3"``."""
    if group not in GROUPS:
        raise ValueError(f"frame averaging: group must be one of {GROUPS}, got {group!r}")
    return torch.tensor(_SE3_SIGNS if group == "SE3" else _E3_SIGNS, dtype=torch.float64)


def part_frames(pos: Tensor, part: Tensor, num_parts: int, group: str) -> tuple[Tensor, Tensor, Tensor]:
    """Centroid and PCA frames of every part, without gradient.

    Computed in float64 whatever ``pos``'s dtype, so that float32 inputs moved by a
    rigid motion give frames that move with them to float32 round-off.

    Args:
        pos: ``[N, 3]`` positions.
        part: ``[N]`` int64 part id of each point, in ``[0, num_parts)``.
        num_parts: P.
        group: ``"SE3"`` or ``"E3"``.

    Returns:
        ``centre [P, 3]`` and ``frames [P, |F|, 3, 3]`` (columns are the axes) in
        ``pos.dtype``; ``eigenvalues [P, 3]`` float64, ascending.
    """
    signs = sign_patterns(group).to(pos.device)
    p = pos.detach().double()
    count = scatter(torch.ones_like(p[:, 0]), part, 0, num_parts, "sum").clamp_min(1.0)
    centre = scatter(p, part, 0, num_parts, "sum") / count[:, None]
    x = p - centre[part]
    cov = scatter(x[:, :, None] * x[:, None, :], part, 0, num_parts, "sum")  # [P, 3, 3]
    evals, evecs = torch.linalg.eigh(cov)
    if group == "SE3":  # a proper rotation: flipping all three axes flips the determinant
        evecs = evecs * torch.linalg.det(evecs).sign()[:, None, None]
    frames = evecs[:, None, :, :] * signs[None, :, None, :]  # scale the columns
    return centre.to(pos.dtype), frames.to(pos.dtype), evals


def frame_is_unique(evals: Tensor, rel_gap: float = 1e-6) -> Tensor:
    """``[P]`` bool: the part's PCA frame is defined up to the signs frame averaging removes.

    False where two eigenvalues coincide to ``rel_gap`` of the largest (a part of one
    or two points, collinear points, or a symmetric part): ``eigh`` then returns an
    arbitrary basis of the degenerate eigenspace and nothing computed in that frame
    is equivariant.
    """
    gap = (evals[:, 1:] - evals[:, :-1]).amin(1)
    return gap > rel_gap * evals[:, -1].abs().clamp_min(1e-300)


def _mlp(widths: Sequence[int], last_activation: bool) -> nn.Sequential:
    # He (Kaiming) initialisation with zero biases, not torch's default: without normalisation
    # layers, the default shrinks the signal at every layer, and through the ~8 layers of a
    # block the per-point features of a Rooms scene were nearly constant (std over points 3% of
    # their size); APEN then predicted background everywhere. Measured on one scene, 150 steps:
    # cross-entropy stuck at the label entropy (1.43) with the default, 1.03 with this.
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(a, b)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if last_activation or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FramePointNet(nn.Module):
    """A PointNet segmentation network applied part by part, frame-averaged over each part's frames.

    Per row (point i, frame F of i's part): the input vectors expressed in the
    frame (``F^T v``) and the input scalars go through a point MLP
    (``point_widths``; ReLU between layers, none after the last, as in the APEN
    code); the last layer is pooled per (part, frame) (weighted ``mean``, ``max``
    or both), broadcast back and concatenated with every point layer; a head MLP
    (``head_widths``, ReLU) gives the hidden features, and a linear layer the
    outputs. Scalars are averaged over frames; vector outputs are mapped back
    (``F u``) and averaged.

    Args:
        num_vectors: input vectors per point (V).
        num_scalars: input scalars per point (S).
        point_widths: widths of the point MLP.
        head_widths: widths of the head MLP (the last is the hidden size H).
        out_scalars: invariant outputs per point (A, may be 0).
        out_vectors: equivariant vector outputs per point (Bv, may be 0).
        pooling: ``"mean"`` (the APEN code), ``"max"`` or ``"mean_max"``.

    Shapes:
        vectors ``[N, V, 3]``, scalars ``[N, S]`` or None, part ``[N]``,
        frames ``[P, |F|, 3, 3]``, weight ``[N]`` or None, unique ``[P]`` bool or None ->
        scalars ``[N, A]``, vectors ``[N, Bv, 3]``, hidden ``[N, H]`` (frame-averaged).

    Parts flagged ``unique=False`` (no well-defined frame, see :func:`frame_is_unique`)
    see only their scalars (vector inputs zeroed) and output zero vectors, so their
    points stay exactly invariant/equivariant at the price of ignoring their geometry.
    """

    def __init__(
        self,
        num_vectors: int,
        num_scalars: int,
        point_widths: Sequence[int],
        head_widths: Sequence[int],
        out_scalars: int = 0,
        out_vectors: int = 0,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "max", "mean_max"):
            raise ValueError(f"FramePointNet: pooling must be mean, max or mean_max, got {pooling!r}")
        if not point_widths or not head_widths:
            raise ValueError("FramePointNet: point_widths and head_widths must not be empty")
        self.num_vectors, self.num_scalars = int(num_vectors), int(num_scalars)
        self.out_scalars, self.out_vectors, self.pooling = int(out_scalars), int(out_vectors), pooling
        c_in = 3 * self.num_vectors + self.num_scalars
        self.point_mlp = _mlp([c_in, *point_widths], last_activation=False)
        pooled = point_widths[-1] * (2 if pooling == "mean_max" else 1)
        self.head = _mlp([sum(point_widths) + pooled, *head_widths], last_activation=True)
        n_out = self.out_scalars + 3 * self.out_vectors
        self.out = nn.Linear(head_widths[-1], n_out) if n_out else None
        self.hidden_dim = int(head_widths[-1])

    def extra_repr(self) -> str:
        return (
            f"vectors={self.num_vectors}, scalars={self.num_scalars} -> scalars={self.out_scalars}, "
            f"vectors={self.out_vectors}, pooling={self.pooling}"
        )

    def _pool(self, h: Tensor, group: Tensor, size: int, weight: Tensor | None) -> Tensor:
        out = []
        if self.pooling in ("mean", "mean_max"):
            if weight is None:
                out.append(scatter(h, group, 0, size, "mean"))
            else:
                num = scatter(h * weight[:, None], group, 0, size, "sum")
                den = scatter(weight, group, 0, size, "sum").clamp_min(1e-12)
                out.append(num / den[:, None])
        if self.pooling in ("max", "mean_max"):
            out.append(scatter(h, group, 0, size, "max"))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    def forward(
        self,
        vectors: Tensor,
        scalars: Tensor | None,
        part: Tensor,
        frames: Tensor,
        weight: Tensor | None = None,
        unique: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, nf = vectors.shape[0], frames.shape[1]
        if unique is not None:
            frames = frames * unique.to(frames.dtype)[:, None, None, None]  # no frame: vectors -> 0
        fr = frames[part]  # [N, |F|, 3, 3]
        h = torch.einsum("nfij,nvi->nfvj", fr, vectors).reshape(n, nf, 3 * self.num_vectors)
        if self.num_scalars:
            h = torch.cat([h, scalars[:, None, :].expand(n, nf, self.num_scalars)], dim=2)
        h = h.reshape(n * nf, -1)  # rows point-major: row = i * |F| + f
        group = (part[:, None] * nf + torch.arange(nf, device=part.device)).reshape(-1)
        w = None if weight is None else weight.repeat_interleave(nf)
        layers = []  # every point layer's output (after its ReLU; the last has none), as in the code
        for layer in self.point_mlp:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                layers.append(h)
            else:
                layers[-1] = h
        pooled = self._pool(h, group, frames.shape[0] * nf, w)
        hidden = self.head(torch.cat([*layers, pooled[group]], dim=1))  # [N|F|, H]
        hidden_mean = hidden.reshape(n, nf, -1).mean(1)
        if self.out is None:
            return vectors.new_zeros(n, 0), vectors.new_zeros(n, 0, 3), hidden_mean
        out = self.out(hidden).reshape(n, nf, -1)
        s = out[..., : self.out_scalars].mean(1)
        u = out[..., self.out_scalars :].reshape(n, nf, self.out_vectors, 3)
        v = torch.einsum("nfij,nfvj->nvi", fr, u) / nf
        return s, v, hidden_mean
