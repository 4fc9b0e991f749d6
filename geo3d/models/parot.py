"""PaRot classifier (Zhang et al., AAAI 2023): patch-wise rotation invariance by disentanglement and pose restoration.

Pipeline (reference: GitHub dingxin-zhang/PaRot, ``models/model_cls.py``):

1. Centre the cloud on its centroid; ``num_patches`` centres by farthest-point
   sampling (geo3d's ``fps``); a local patch per centre, its ``k_local``
   nearest points relative to the centre; a global patch per centre, the first
   ``k_global`` FPS points (= FPS with ``k_global`` points) relative to it.
2. Disentanglement (:mod:`geo3d.nn.patch_disentangle`): a siamese encoder per
   scale maps each patch to an invariant feature and two directions (a frame);
   in training it sees two random rotations of every patch and returns the
   direction-consistency, orthogonality and feature-consistency losses.
3. Pose restoration and intra-scale aggregation (:mod:`geo3d.nn.patch_relation`):
   an edge convolution over the ``k_intra`` nearest centres, each edge carrying
   the 16-number rotation-invariant relation code of the two patch frames.
4. Inter-scale aggregation: per centre, the aggregated local feature, the
   global-patch feature and the embedded local/global relation code -> MLP ->
   max over centres -> classifier MLP.

Training: ``forward`` returns logits; in training mode the model also sets
``aux_loss`` (the weighted disentanglement losses, which the point-cloud task
adds to its cross-entropy) and ``aux_terms`` (their values, for logging); both
are cleared in eval mode.

Invariance. With the paper's PointNet encoder (``encoder: pointnet``) the
patch features and frames are only *trained* to be invariant/equivariant, so
the logits' rotation invariance is learned and must be measured. With
``encoder: vn`` (vector neurons) they are exact, and so is the model's
invariance (up to round-off and FPS/kNN ties, which generic clouds do not
have). Translations and permutations: exact for both (centring; a start point
for FPS chosen from the geometry, not the order).

Where this differs from the paper/code, and why:
- FPS starts at the point farthest from the centroid at inference (the code
  starts at a random point, also at test time): a deterministic,
  order-independent choice makes the outputs permutation invariant. Training
  keeps the random start, as augmentation.
- Distances and the inter-scale code use the centroid-centred cloud (the code
  uses the raw coordinates of its pre-centred data): translation invariance.
- The global patch is always the first ``k_global`` FPS centres (the code
  draws a second FPS with another random start unless ``k_global`` equals
  ``num_patches``): same distribution, one FPS.
- No input resampling to ``num_points`` inside the model; no ball-query option.
- The frame's third axis is not detached from the graph (the code detaches it
  in the classifier's relation code only).
- Cross-entropy without the code's 0.2 label smoothing: the shared task's loss.
- The ``vn`` encoder is an addition (exact invariance), not part of the paper.
- Hyper-parameters default to the code's (256 patches, k 64/32/32, 128-d
  features, emb 1024, loss weights dir 1/1, orth 0.2/0.1, feat 0/0); the
  shipped config shrinks the sizes for CPU training.

Segmentation (:class:`PaRotSegmentation`, the code's ``models/model_seg.py``):
the same encoder, then pose-aware feature propagation in two steps.
(1) Per centre, ``[patch features | shape code]`` (the shape code is the max of
the inter-scale features over centres) -> MLP (the code's ``FP_Module_root``).
(2) Per point p and each of its ``k_interp`` nearest centres c, the centre's
feature, the embedded relative pose ``(|p - c|, F_l u, F_g u)`` with
``u = (p - c)/|p - c|`` (invariant: frames rotate as ``F R^T``), and the
one-hot object category -> MLP -> *sum* over the centres (the code's
``FP_Module_angle_label``: it computes inverse-distance weights and does not
use them; so do we not), then a per-point MLP to the part logits. Choices:
``k_interp`` 11 as the code's default (the shipped config uses fewer for the
CPU); the first layer of the pair MLP is applied to the centre and category
blocks before they are gathered (the same linear map, ``k_interp`` times less
work); the code's label smoothing is not used.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from geo3d.models.config import SHAPE_METADATA, ModelConfig, PositiveInt
from geo3d.models.vn_dgcnn import dense_batch
from geo3d.nn.patch_disentangle import PointNetDisentangler, SiameseDisentangle, VNDisentangler, patch_frame
from geo3d.nn.patch_relation import (
    RELATION_DIM,
    IntraPatchAggregation,
    apply_flat,
    gather_neighbours,
    inter_relation,
    intra_relation,
    mlp,
    nearest,
)
from geo3d.ops.point_ops import fps


class PaRotEncoderConfig(ModelConfig):
    """PaRot's encoder keys (patches, disentanglers, intra/inter-patch MLPs) and aux-loss weights."""

    metadata: ClassVar[tuple[str, ...]] = SHAPE_METADATA

    encoder: Literal["pointnet", "vn"] = "pointnet"  # the paper's; "vn": vector neurons, exactly invariant
    num_patches: PositiveInt = 256
    k_local: PositiveInt = 64
    k_global: PositiveInt = 32
    k_intra: PositiveInt = 32
    dim: PositiveInt = 128
    vn_channels: PositiveInt = 32
    intra_widths: list[PositiveInt] = Field([128, 128, 128], min_length=1)
    pose_dim: PositiveInt = 32
    inter_widths: list[PositiveInt] = [256, 512]
    emb: PositiveInt = 1024
    loss_dir_local: float = Field(1.0, ge=0)
    loss_dir_global: float = Field(1.0, ge=0)
    loss_orth_local: float = Field(0.2, ge=0)
    loss_orth_global: float = Field(0.1, ge=0)
    loss_feat_local: float = Field(0.0, ge=0)
    loss_feat_global: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _neighbours_fit(self) -> Self:
        for key in ("k_global", "k_intra"):
            if getattr(self, key) > self.num_patches:
                raise ValueError(f"'{key}' ({getattr(self, key)}) exceeds 'num_patches' ({self.num_patches})")
        return self


class PaRotConfig(PaRotEncoderConfig):
    """PaRot classifier: the encoder, max over the patches, the head MLP."""

    arch: ClassVar[str] = "parot"

    num_classes: PositiveInt = 16
    head: list[PositiveInt] = [512, 256]
    dropout: float = Field(0.5, ge=0, lt=1)


class PaRotSegConfig(PaRotEncoderConfig):
    """PaRot part segmentation: the encoder, pose-aware propagation to the points, the head."""

    arch: ClassVar[str] = "parot_seg"

    num_categories: PositiveInt = 16
    num_parts: PositiveInt = 50
    k_interp: PositiveInt = 11  # patch centres each point interpolates from
    root_widths: list[PositiveInt] = Field([256, 256], min_length=1)
    point_widths: list[PositiveInt] = Field([256, 128, 128], min_length=1)
    head: list[PositiveInt] = [128, 128]
    dropout: float = Field(0.4, ge=0, lt=1)

    @model_validator(mode="after")
    def _interpolation_fits(self) -> Self:
        if self.k_interp > self.num_patches:
            raise ValueError(f"'k_interp' ({self.k_interp}) exceeds 'num_patches' ({self.num_patches})")
        return self


def farthest_point_centres(x: Tensor, s: int, random_start: bool) -> Tensor:
    """Indices ``[B, S]`` of ``s`` FPS centres of each centred cloud ``x [B, P, 3]``.

    FPS starts at the point farthest from the centroid (an order-independent
    choice), or a random one when ``random_start``.
    """
    b, p, _ = x.shape
    if random_start:
        start = torch.randint(p, (b,), device=x.device)
    else:
        start = x.detach().norm(dim=-1).argmax(dim=1)
    batch = torch.arange(b, device=x.device).repeat_interleave(p)
    idx = fps(x.detach().reshape(-1, 3), batch, num_graphs=b, num=s, start=start).reshape(b, s)
    return idx - (torch.arange(b, device=x.device) * p)[:, None]


class PatchEncoding(NamedTuple):
    """What PaRot's encoder gives the heads (``B`` clouds of ``P`` points, ``S`` centres)."""

    points: Tensor  # [B, P, 3], centred on each cloud's centroid
    centres: Tensor  # [B, S, 3], FPS patch centres (centred)
    local_frames: Tensor  # [B, S, 3, 3], rows = the local patch's directions
    global_frames: Tensor  # [B, S, 3, 3], the global patch's
    patch_features: Tensor  # [B, S, C], [intra-aggregated local | global | relation code]
    per_centre: Tensor  # [B, S, emb], after the inter-scale MLP (max over S = the shape code)


class PaRot(nn.Module):
    """Batch of equal-size clouds (``pos``, ``batch``) -> logits ``[B, num_classes]``."""

    Config: ClassVar[type[ModelConfig]] = PaRotConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = PaRotConfig.resolve(config)
        self.config = cfg
        dim = cfg["dim"]

        def encoder() -> nn.Module:
            if cfg["encoder"] == "vn":
                return VNDisentangler(dim, cfg["vn_channels"])
            return PointNetDisentangler(dim)

        self.local_patches = SiameseDisentangle(encoder())
        self.global_patches = SiameseDisentangle(encoder())
        self.intra = IntraPatchAggregation(dim, cfg["intra_widths"], cfg["pose_dim"])
        act = nn.LeakyReLU(0.2)
        self.inter_embed = mlp([RELATION_DIM, cfg["pose_dim"]], act)
        inter_in = cfg["intra_widths"][-1] + dim + cfg["pose_dim"]
        self.inter = mlp([inter_in, *cfg["inter_widths"], cfg["emb"]], act)
        head: list[nn.Module] = []
        width = cfg["emb"]
        for w in cfg["head"]:
            head += [nn.Linear(width, w, bias=False), nn.BatchNorm1d(w), act, nn.Dropout(cfg["dropout"])]
            width = w
        head.append(nn.Linear(width, cfg["num_classes"]))
        self.head = nn.Sequential(*head)
        self.aux_loss: Tensor | None = None
        self.aux_terms: dict[str, float] = {}

    def forward(self, data) -> Tensor:
        return self.head(self.encode(data).per_centre.max(dim=1).values)

    def encode(self, data) -> PatchEncoding:
        """The shared encoder: patches, their disentangled features and frames, and per-centre features."""
        cfg = self.config
        pos, _ = dense_batch(data)
        b, p, _ = pos.shape
        s = cfg["num_patches"]
        if p < max(s, cfg["k_local"]):
            raise ValueError(
                f"parot: clouds of {p} points are smaller than num_patches={s} or k_local={cfg['k_local']}"
            )
        x = pos - pos.mean(dim=1, keepdim=True)
        centres = gather_neighbours(x, farthest_point_centres(x, s, self.training).unsqueeze(-1))
        centres = centres.squeeze(2)  # [B, S, 3]
        local = gather_neighbours(x, nearest(centres, x, cfg["k_local"])) - centres.unsqueeze(2)
        glob = centres[:, None, : cfg["k_global"]] - centres.unsqueeze(2)  # [B, S, G, 3]
        inv_l, dirs_l, losses_l = self.local_patches(local.reshape(b * s, -1, 3))
        inv_g, dirs_g, losses_g = self.global_patches(glob.reshape(b * s, -1, 3))
        frames_l = patch_frame(dirs_l).reshape(b, s, 3, 3)
        frames_g = patch_frame(dirs_g).reshape(b, s, 3, 3)

        nbr = nearest(centres, centres, cfg["k_intra"])  # [B, S, k]; self included, as in the code
        h_local = self.intra(inv_l.reshape(b, s, -1), intra_relation(frames_l, centres, nbr), nbr)
        code = apply_flat(self.inter_embed, inter_relation(frames_l, frames_g, centres))
        patch_features = torch.cat([h_local, inv_g.reshape(b, s, -1), code], dim=-1)
        self._set_aux(losses_l, losses_g)
        return PatchEncoding(
            x, centres, frames_l, frames_g, patch_features, apply_flat(self.inter, patch_features)
        )

    def _set_aux(self, local: dict[str, Tensor], glob: dict[str, Tensor]) -> None:
        terms = {f"{name}_local": v for name, v in local.items()}
        terms.update({f"{name}_global": v for name, v in glob.items()})
        total = None
        for name, value in terms.items():
            weight = float(self.config[f"loss_{name}"])
            if weight:
                total = weight * value if total is None else total + weight * value
        self.aux_loss = total
        self.aux_terms = {name: float(v.detach()) for name, v in terms.items()}


class PaRotSegmentation(PaRot):
    """Batch of equal-size clouds (``pos``, ``batch``, category ``y [B]``) -> part logits ``[B*P, num_parts]``.

    Points keep the batch's order. The aux losses are PaRot's (see the module docstring).
    """

    Config: ClassVar[type[ModelConfig]] = PaRotSegConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = PaRotSegConfig.resolve(config)
        # the classifier's encoder; its head is replaced by the propagation modules below
        super().__init__(
            {k: v for k, v in cfg.items() if k in PaRotEncoderConfig.model_fields} | {"head": []}
        )
        self.config = cfg
        del self.head
        act = nn.LeakyReLU(0.2)
        patch_dim = cfg["intra_widths"][-1] + cfg["dim"] + cfg["pose_dim"]
        self.root = mlp([patch_dim + cfg["emb"], *cfg["root_widths"]], nn.ReLU())
        self.point_pose = mlp([7, cfg["pose_dim"]], act)
        width = cfg["point_widths"][0]
        # first pair layer on [centre feature | pose | category]: split so that the centre and category
        # blocks are applied once per centre / per cloud and gathered afterwards
        self.pair_in = nn.Linear(
            cfg["root_widths"][-1] + cfg["pose_dim"] + cfg["num_categories"], width, bias=False
        )
        self.pair_rest = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), *mlp(cfg["point_widths"], nn.ReLU()))
        head: list[nn.Module] = []
        width = cfg["point_widths"][-1]
        for i, w in enumerate(cfg["head"]):
            head += [nn.Linear(width, w, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
            if i == len(cfg["head"]) - 1:
                head.append(nn.Dropout(cfg["dropout"]))
            width = w
        head.append(nn.Linear(width, cfg["num_parts"]))
        self.seg_head = nn.Sequential(*head)

    def forward(self, data) -> Tensor:
        cfg = self.config
        enc = self.encode(data)
        b, p, _ = enc.points.shape
        s, k = cfg["num_patches"], cfg["k_interp"]
        shape_code = enc.per_centre.max(dim=1, keepdim=True).values.expand(-1, s, -1)
        centre_feat = apply_flat(self.root, torch.cat([enc.patch_features, shape_code], dim=-1))  # [B, S, R]

        nbr = nearest(enc.points, enc.centres, k)  # [B, P, k]
        rel = enc.points.unsqueeze(2) - gather_neighbours(enc.centres, nbr)  # [B, P, k, 3]
        u = nn.functional.normalize(rel, dim=-1).unsqueeze(-1)
        pose = torch.cat(
            [
                rel.norm(dim=-1, keepdim=True),
                (gather_neighbours(enc.local_frames, nbr) @ u).squeeze(-1),
                (gather_neighbours(enc.global_frames, nbr) @ u).squeeze(-1),
            ],
            dim=-1,
        )  # [B, P, k, 7]
        category = nn.functional.one_hot(data.y.reshape(-1), cfg["num_categories"]).to(rel.dtype)  # [B, Cat]
        w_centre, w_pose, w_cat = self.pair_in.weight.split(
            [centre_feat.shape[-1], cfg["pose_dim"], cfg["num_categories"]], dim=1
        )
        pair = (
            gather_neighbours(centre_feat @ w_centre.T, nbr)
            + apply_flat(self.point_pose, pose) @ w_pose.T
            + (category @ w_cat.T)[:, None, None]
        )
        h = apply_flat(self.pair_rest, pair).sum(dim=2)  # [B, P, point_widths[-1]]
        return self.seg_head(h.reshape(b * p, -1))
