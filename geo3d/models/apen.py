"""APEN: approximately piecewise-E(3) equivariant point networks (Atzmon et al., ICLR 2024).

Paper: https://arxiv.org/abs/2402.08529; code: github.com/matanatz/APEN
(``code/model/model_segmentation.py``, ``model_apen.py``, ``loss_seg.py``,
``confs/dfaust.conf``). A scene made of parts that move independently (objects
in a room, limbs of a body) is equivariant to one rigid motion *per part*. A
network that is equivariant part by part for a partition finer than the true
one is equivariant for the true one too, so APEN starts from a fine partition
and coarsens it block by block:

1. initial partition: ``num_fps_parts`` farthest-point centres plus
   ``num_random_parts`` random points at least ``random_part_min_dist`` from
   every centre; each point is assigned to a centre by the posterior of an
   isotropic Gaussian mixture (variance ``init_variance``, equal weights):
   sampled, or its argmax (nearest centre), see ``sampling`` below;
2. each block runs a :class:`~geo3d.nn.frame_averaging.FramePointNet` part by
   part under Frame Averaging (per-part centroid and PCA frame, 4 sign frames
   for ``group="SE3"``, 8 for ``"E3"``); per point it sees its ``knn`` nearest
   points *of the same part* (offsets to the part centroid), its normal (with
   ``use_normals``) and the previous block's features pooled over its part; it
   predicts invariant features, equivariant vectors, and a vote ``x + dx`` for
   the centre of the point's (true) part;
3. the votes are clustered by an isotropic GMM fitted by EM with a fixed
   variance per block (``variances``: larger variance, coarser partition);
   close centres are merged and parts with weight ``<= prune_thr * 2**block``
   pruned; a hard assignment gives the next block's partition;
4. a decoder (same network, no vote) gives per-point invariant features
   ``feat``, segmentation logits and, optionally, scene logits.

Given the partition (``forward(..., partition=ids)``), the network is exactly
piecewise equivariant: votes move with their part, features and logits do not
change (up to round-off, and for parts with a non-degenerate covariance). With
predicted partitions it is so whenever every predicted part lies inside one true
part and the partition itself does not change under the motion (with
sampling: the same draws, e.g. the same ``generator`` seed): the paper's bound
``(lambda(Q) + delta(Q)) M``, with lambda the probability of a part straddling
two true parts. tests/test_apen.py measures it falling to round-off as the
number of random initial parts grows and as the EM variance shrinks.

Where the paper and the code disagree, and what this module does:

- **Assignment.** The paper (Eq. 8, phi_III) takes ``argmax_j Q_ij``. The code
  draws a straight-through Gumbel-softmax sample (``tau=10, hard=True``) in
  training *and* at evaluation (``tau`` does not change a hard sample, only the
  surrogate gradient). ``sampling`` picks: ``"always"`` (default, as the code:
  a Gumbel-max sample of the posterior in training and evaluation; pass a
  ``generator`` for reproducible outputs), ``"never"`` (argmax everywhere, as
  the paper: deterministic) or ``"train"`` (sample in training, argmax at
  evaluation). The default follows the code because it measured best: with
  ``init_variance`` 0.2 the sampled initial parts are scattered over an object
  (each sees much of it), the argmax ones are compact Voronoi cells. In a
  4-object overfit run (400 steps, held-out scenes) the point accuracy was
  0.98 / 0.65 / 0.37 and the mean vote error 0.05 / 0.18 / 0.31 for always /
  never / train; ``"train"`` fails because evaluation sees partitions that
  training never did.
- **Implicit gradient.** The code re-attaches the EM fixed point with one
  Newton step ``theta = theta~.detach() - pinv(Fisher)(s - s.detach())`` at
  block boundaries, so the next block's (straight-through) assignment weights
  back-propagate into the previous votes. Not done here: the partition is a
  non-differentiable (argmax) function of detached votes. Every block's votes
  get their gradient from their own term of the vote loss, and the features
  still flow from block to block through the part-pooled inputs.
- **Vote loss.** The code's config uses the squared error (``type=l2``); a
  reading of the paper gives an L1 error. :func:`geo3d.models.apen_loss.apen_loss` defaults to l2 and
  accepts l1.
- **Re-seeding.** The code re-runs FPS from scratch over the votes before each
  EM. Here the previous parts' vote centroids are kept as seeds and FPS
  *continues* from them to fill the slots: once every object holds a centre,
  the later FPS picks depend only on distances inside objects, so the
  partition does not change when objects move independently (from-scratch FPS
  starts at an arbitrary point and its first picks depend on where the objects
  are relative to each other).
- **Merging.** The code compares ``sum((dmu^2)^2) / sigma^2`` with
  ``merge_thr^2`` (the squared difference is squared again, likely a slip) and
  keeps one centre. Here the Mahalanobis distance ``|dmu| / sigma`` is compared
  with ``merge_thr`` and the merged centre is the weight-averaged one (order
  independent). The default 0.15 matches the code's merge radius within ~30 %
  at its variances.
- **FPS start.** The code starts at each cloud's first point; here at the point
  farthest from the centroid (independent of point order and pose).
- **Pooled features.** The code pools the previous block's features over the
  new parts with the *soft* EM responsibilities; here with the hard partition
  used by the block (soft weights leak across parts and break exactness).
- **Small parts.** For parts with fewer than ``knn`` points, the code's
  neighbour search spills into other parts; here the list is padded with the
  point itself. Parts with at most one point get a random frame in the code;
  here ``eigh``'s basis of the zero matrix (no frame exists either way).
- **Widths.** The code's blocks grow their widths with their input and its
  decoder is wider (up to 896); here every block and the decoder share
  ``point_widths`` and ``head_widths``.

The EM responsibilities are ``[N, K]`` (K = number of slots, 40 by default); the
networks' rows are ``N * |F|``. Nothing is ``O(N K |F|)``.

Length: about 90 of this module's ~450 lines are this account of the method and of where the
code departs from it; the loss is in :mod:`geo3d.models.apen_loss`, the partitions in
:mod:`geo3d.nn.partition`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from geo3d.models.config import ModelConfig, NonNegativeInt, PositiveInt
from geo3d.nn.frame_averaging import GROUPS, FramePointNet, frame_is_unique, part_frames
from geo3d.nn.partition import (
    assign_parts,
    compact_parts,
    farthest_point_fill,
    gmm_em,
    knn_in_parts,
    merge_close_centres,
    part_centre_seeds,
    random_fill,
)
from geo3d.ops.scatter import scatter


class APENBlocksConfig(ModelConfig):
    """APEN's backbone keys (everything but the segmentation classes); defaults follow the code's
    ``confs/dfaust.conf`` where it has the setting."""

    arch: ClassVar[str] = "apen"
    metadata: ClassVar[tuple[str, ...]] = ("train_rotation", "num_points", "arch", "object_yaw")

    num_scene_classes: NonNegativeInt = 0  # 0: no scene-classification head
    group: Literal["SE3", "E3"] = "SE3"  # SE3: 4 sign frames, det +1; E3: 8, reflections too
    use_normals: bool = False  # the code feeds normals; needs data.normal
    num_fps_parts: NonNegativeInt = 30  # initial partition: FPS centres ...
    num_random_parts: NonNegativeInt = 10  # ... plus random points >= random_part_min_dist from all centres
    random_part_min_dist: float = Field(0.05, ge=0)
    init_variance: float = Field(0.2, gt=0)  # GMM variance of the initial assignment (matters when sampling)
    # one per block: EM variance on that block's votes
    variances: list[Annotated[float, Field(gt=0)]] = Field([0.001, 0.001, 0.003, 0.005], min_length=1)
    em_iters: NonNegativeInt = 16  # EM steps per re-partition (merge after half, prune 4 steps later)
    merge_thr: float = Field(0.15, ge=0)  # merge centres closer than merge_thr * sqrt(variance)
    prune_thr: float = Field(1e-4, ge=0)  # drop parts with weight <= prune_thr * 2**block
    # hard assignment: Gumbel-max sample ("always", "train") or argmax ("never")
    sampling: Literal["never", "train", "always"] = "always"
    knn: PositiveInt = 10  # neighbours of the same part in each point's input
    inv_channels: list[NonNegativeInt] = [8, 8, 8, 32]  # invariant features each block passes on
    vec_channels: list[NonNegativeInt] = [
        8,
        8,
        8,
        32,
    ]  # equivariant vectors each block passes on (+ its vote)
    point_widths: list[PositiveInt] = [64, 96, 128, 160, 192]  # per-row MLP of every block and the decoder
    head_widths: list[PositiveInt] = [256, 256, 128]  # head MLP; the last width is feat's
    pooling: Literal["mean", "max", "mean_max"] = "mean"  # per-(part, frame) pooling: mean (the code)

    @model_validator(mode="after")
    def _one_entry_per_block(self) -> Self:
        if self.num_fps_parts + self.num_random_parts < 1:
            raise ValueError("'num_fps_parts' + 'num_random_parts' must be at least 1")
        for key in ("inv_channels", "vec_channels"):
            if len(getattr(self, key)) != len(self.variances):
                raise ValueError(f"'{key}' needs one entry per block ({len(self.variances)}, as 'variances')")
        return self


class APENConfig(APENBlocksConfig):
    """The APEN segmentation network's config (:class:`APEN`)."""

    num_classes: PositiveInt = 24  # segmentation classes (24 SMPL parts in the code)


assert GROUPS == get_args(APENConfig.model_fields["group"].annotation), "group literal follows GROUPS"


# ---------------------------------------------------------------------------
# The network.


def _noise_key(priority: Tensor | None) -> Tensor | None:
    """``point_priority [N]`` (float64 multiples of 2^-53 in ``(0, 1]``) as exact int64 keys, or None."""
    return None if priority is None else (priority.double() * float(1 << 53)).long()


def _graph_inputs(data: Any) -> tuple[Tensor, Tensor, int]:
    pos = getattr(data, "pos", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"apen: the batch needs 'pos' [N, 3], got {tuple(getattr(pos, 'shape', ()))}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"apen: 'pos' must be float32 or float64, got {pos.dtype}")
    batch = getattr(data, "batch", None)
    if batch is None:
        batch = torch.zeros(len(pos), dtype=torch.long, device=pos.device)
    if hasattr(data, "num_graphs"):
        num_graphs = int(data.num_graphs)
    else:
        num_graphs = int(batch.max()) + 1 if len(batch) else 1
    return pos, batch, num_graphs


class APEN(nn.Module):
    """APEN backbone with segmentation (and optional scene classification) heads.

    Args:
        config: keys of :class:`APENConfig` (one block per entry of ``variances``);
            unknown keys raise ``ValueError``.

    Shapes:
        input: a PyG ``Data``/``Batch`` with ``pos [N, 3]``, optional ``batch [N]``
        and ``normal [N, 3]`` (needed with ``use_normals``); clouds may differ in size.
        output: see :meth:`forward`.
    """

    Config: ClassVar[type[ModelConfig]] = APENConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = APENConfig.resolve(config)
        self.config = cfg
        self.group, self.knn, self.use_normals = cfg["group"], int(cfg["knn"]), bool(cfg["use_normals"])
        self.num_slots = int(cfg["num_fps_parts"] + cfg["num_random_parts"])
        inv, vec = list(cfg["inv_channels"]), list(cfg["vec_channels"])
        geo = self.knn + int(self.use_normals)  # vectors from the geometry: neighbour offsets (+ normal)
        widths = {"point_widths": cfg["point_widths"], "head_widths": cfg["head_widths"]}
        self.blocks = nn.ModuleList(
            FramePointNet(
                geo + (vec[i - 1] if i else 0),
                inv[i - 1] if i else 0,
                **widths,
                out_scalars=inv[i],
                out_vectors=1 + vec[i],  # the first vector is the vote displacement
                pooling=cfg["pooling"],
            )
            for i in range(len(inv))
        )
        self.decoder = FramePointNet(geo + vec[-1], inv[-1], **widths, pooling=cfg["pooling"])
        hidden = self.decoder.hidden_dim
        self.feat_dim = hidden
        self.seg_head = nn.Linear(hidden, int(cfg["num_classes"]))
        nsc = int(cfg["num_scene_classes"])
        self.scene_head = (
            nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, nsc)) if nsc else None
        )

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"group={cfg['group']}, blocks={len(self.blocks)}, slots={self.num_slots}, "
            f"sampling={cfg['sampling']}, feat_dim={self.feat_dim}"
        )

    # -- partitions ---------------------------------------------------------

    def _sample(self) -> bool:
        """Draw the hard assignments (Gumbel-max) instead of taking the argmax?"""
        mode = self.config["sampling"]
        return mode == "always" or (mode == "train" and self.training)

    def initial_partition(
        self,
        pos: Tensor,
        batch: Tensor,
        num_graphs: int,
        generator: torch.Generator | None = None,
        priority: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """FPS + random centres, then each point to its most likely centre: ``(part [N], part_batch [P])``.

        ``priority [N]``: fixed per-point priorities for the random centres (see :func:`random_fill`).
        """
        cfg = self.config
        y = pos.detach().double()
        mu = y.new_zeros(num_graphs, self.num_slots, 3)
        mask = torch.zeros(num_graphs, self.num_slots, dtype=torch.bool, device=y.device)
        mu, mask, _ = farthest_point_fill(y, batch, mu, mask, int(cfg["num_fps_parts"]))
        mu, mask = random_fill(
            y,
            batch,
            mu,
            mask,
            int(cfg["num_random_parts"]),
            float(cfg["random_part_min_dist"]),
            generator,
            priority,
        )
        pi = mask.to(y.dtype) / mask.sum(1, keepdim=True).clamp_min(1)
        slot = assign_parts(
            y,
            batch,
            mu,
            pi,
            mask,
            float(cfg["init_variance"]),
            self._sample(),
            generator,
            _noise_key(priority),
            0,
        )
        return compact_parts(batch, slot, self.num_slots)

    def repartition(
        self,
        vote: Tensor,
        batch: Tensor,
        num_graphs: int,
        part: Tensor,
        part_batch: Tensor,
        block: int,
        generator: torch.Generator | None = None,
        noise_key: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Partition from block ``block``'s votes: seeds, merging, EM, pruning, hard assignment
        (sampled from ``noise_key``-keyed noise when given, see :func:`assign_parts`)."""
        cfg = self.config
        y = vote.detach().double()
        var = float(cfg["variances"][block])
        mu, mask = part_centre_seeds(y, part, part_batch, num_graphs, self.num_slots)
        mu, mask, _ = farthest_point_fill(y, batch, mu, mask, self.num_slots)
        pi = mask.to(y.dtype) / mask.sum(1, keepdim=True).clamp_min(1)
        mu, pi, mask = merge_close_centres(mu, pi, mask, var, float(cfg["merge_thr"]))
        mu, pi, mask = gmm_em(
            y,
            batch,
            mu,
            pi,
            mask,
            var,
            int(cfg["em_iters"]),
            float(cfg["merge_thr"]),
            float(cfg["prune_thr"]) * 2.0**block,
        )
        slot = assign_parts(y, batch, mu, pi, mask, var, self._sample(), generator, noise_key, 1 + block)
        return compact_parts(batch, slot, self.num_slots)

    # -- network --------------------------------------------------------------

    def _stage(
        self,
        net: FramePointNet,
        pos: Tensor,
        normal: Tensor | None,
        part: Tensor,
        num_parts: int,
        prev: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One network over the partition: geometry + previous features pooled per part -> outputs."""
        centre, frames, evals = part_frames(pos, part, num_parts, self.group)
        nbr = knn_in_parts(pos, part, num_parts, self.knn)
        vectors = [pos[nbr] - centre[part][:, None, :]]  # [N, k, 3]
        if normal is not None:
            vectors.append(normal[:, None, :])
        scalars = None
        if prev is not None:
            inv, vec = prev
            n = len(pos)
            vectors.append(scatter(vec.reshape(n, -1), part, 0, num_parts, "mean")[part].reshape(n, -1, 3))
            scalars = scatter(inv, part, 0, num_parts, "mean")[part]
        return net(torch.cat(vectors, dim=1), scalars, part, frames, unique=frame_is_unique(evals))

    def forward(
        self, data: Any, partition: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Run the blocks and the heads.

        Args:
            data: PyG ``Data``/``Batch`` (``pos``, optional ``batch``, ``normal``, and
                ``point_priority [N]`` in ``(0, 1]``: fixed priorities of the random
                initial centres instead of ``generator`` draws, see :func:`random_fill`,
                and the keys of the sampled assignments' noise, see :func:`assign_parts`;
                with them the output follows the points under any reordering).
            partition: optional ``[N]`` non-negative part ids (unique within each
                cloud) used by every block and the decoder instead of the EM.
            generator: random source of the random initial centres and, in
                with ``sampling`` train/always, of the sampled assignments.

        Returns:
            dict with ``feat [N, H]`` (invariant per-point features),
            ``seg_logits [N, num_classes]``, ``scene_logits [B, num_scene_classes]``
            (only when ``num_scene_classes > 0``), ``votes`` (one ``[N, 3]`` per
            block), ``vote [N, 3]`` (the last block's), ``axis [N, 3]`` (the first
            vector the last block passes on, equivariant per part: a detector's
            learned heading frame; None when it passes none), ``partitions`` (the ``[N]``
            part ids each block and the decoder used), ``partition [N]`` (the
            decoder's), ``part_batch [P]`` (cloud of each final part) and
            ``num_parts [B]``.
        """
        pos, batch, num_graphs = _graph_inputs(data)
        normal = None
        if self.use_normals:
            normal = getattr(data, "normal", None)
            if normal is None or normal.shape != pos.shape:
                raise ValueError("apen: this model uses normals: the batch needs 'normal' [N, 3]")
            normal = normal.to(pos.dtype)
        if partition is not None:
            if partition.shape != (len(pos),) or partition.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"apen: partition must be an integer [N]=[{len(pos)}] tensor")
            if len(pos) and int(partition.min()) < 0:
                raise ValueError("apen: partition ids must be non-negative")
            slots = int(partition.max()) + 1 if len(pos) else 1
            part, part_batch = compact_parts(batch, partition.long(), slots)
        priority = getattr(data, "point_priority", None)
        noise_key = _noise_key(priority)
        if partition is None:
            part, part_batch = self.initial_partition(pos, batch, num_graphs, generator, priority)
        partitions, votes, prev = [part], [], None
        for i, block in enumerate(self.blocks):
            inv, vec, _ = self._stage(block, pos, normal, part, len(part_batch), prev)
            vote = pos + vec[:, 0]
            votes.append(vote)
            prev = (inv, vec[:, 1:])
            if partition is None:
                part, part_batch = self.repartition(
                    vote, batch, num_graphs, part, part_batch, i, generator, noise_key
                )
            partitions.append(part)
        _, _, feat = self._stage(self.decoder, pos, normal, part, len(part_batch), prev)
        axis = vec[:, 1] if vec.shape[1] > 1 else None  # the last block's first passed-on vector
        out: dict[str, Any] = {
            "feat": feat,
            "seg_logits": self.seg_head(feat),
            "votes": votes,
            "vote": votes[-1],
            "axis": axis,
            "partitions": partitions,
            "partition": part,
            "part_batch": part_batch,
            "num_parts": torch.bincount(part_batch, minlength=num_graphs),
        }
        if self.scene_head is not None:
            pooled = torch.cat(
                [scatter(feat, batch, 0, num_graphs, "max"), scatter(feat, batch, 0, num_graphs, "mean")], 1
            )
            out["scene_logits"] = self.scene_head(pooled)
        return out

    def seeds(
        self,
        data: Any,
        num_seeds: int,
        out: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Seeds for a VoteNet-style detection head: FPS points with APEN's features and votes.

        FPS starts at each cloud's point farthest from its centroid, so the seeds
        do not depend on the order of the points.

        Args:
            data: the batch given to :meth:`forward` (``batch`` sorted, as PyG makes it).
            num_seeds: S per cloud; every cloud needs at least S distinct points.
            out: the output of ``self(data)`` if already computed.
            generator: passed to :meth:`forward` when ``out`` is None.

        Returns:
            ``seed_idx [B, S]`` (into the batch's points), ``seed_pos [B, S, 3]``,
            ``seed_feat [B, S, H]`` (invariant under a rigid motion of the seed's
            part), ``seed_vote [B, S, 3]`` (the last block's vote for the seed's
            part centre, equivariant), ``seed_axis [B, S, 3]`` (the last block's
            first passed-on vector, equivariant; absent without one).
        """
        out = self(data, generator=generator) if out is None else out
        pos, batch, num_graphs = _graph_inputs(data)
        sizes = torch.bincount(batch, minlength=num_graphs)
        if len(sizes) and int(sizes.min()) < num_seeds:
            b = int(sizes.argmin())
            raise ValueError(
                f"apen.seeds: cloud {b} has {int(sizes[b])} points, fewer than {num_seeds} seeds"
            )
        y = pos.detach().double()
        empty = torch.zeros(num_graphs, num_seeds, dtype=torch.bool, device=pos.device)
        _, mask, idx = farthest_point_fill(y, batch, y.new_zeros(num_graphs, num_seeds, 3), empty, num_seeds)
        if not bool(mask.all()):
            raise ValueError(f"apen.seeds: a cloud has fewer than {num_seeds} distinct points")
        return {
            "seed_idx": idx,
            "seed_pos": pos[idx],
            "seed_feat": out["feat"][idx],
            "seed_vote": out["vote"][idx],
            **({} if out["axis"] is None else {"seed_axis": out["axis"][idx]}),
        }
