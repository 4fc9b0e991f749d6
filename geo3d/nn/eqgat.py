"""EQGAT layers (Le et al., ICLR 2024, "EQGAT-diff"): scalar, vector and edge channels.

Follows the published code (jule-c/eqgat_diff, ``EQGATGlobalEdgeConvFinal``) with
two deliberate changes, both to what its authors evidently intended:

- :class:`GraphNorm` divides by the standard deviation; the published layer
  norm divides by the variance (its ``.sqrt()`` is commented out).
- Vector features are scaled by the RMS of their norms, not by the mean squared norm.

Edge convention (DESIGN.md): ``edge_index[0]`` = sender j, ``edge_index[1]`` =
receiver i; the geometric edge vector is ``pos[j] - pos[i]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geo3d.nn.tensor_product import TensorProductConv
from geo3d.ops import scatter


def scatter_softmax(logits: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """Softmax of ``[E, C]`` logits over the edges sharing a receiver, per channel."""
    amax = scatter(logits.detach(), index, 0, num_nodes, "max")
    ex = torch.exp(logits - amax.index_select(0, index))
    return ex / (scatter(ex, index, 0, num_nodes, "sum").index_select(0, index) + 1e-16)


class GraphNorm(nn.Module):
    """Per-molecule normalisation of scalars (affine) and vectors (scale only, equivariant).

    Shapes:
        ``s [N, S]``, ``v [N, 3, V]``, ``batch [N]`` -> same shapes.
    """

    def __init__(self, scalar_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(scalar_dim))
        self.bias = nn.Parameter(torch.zeros(scalar_dim))
        self.eps = eps

    def forward(
        self, s: Tensor, v: Tensor | None, batch: Tensor, num_graphs: int
    ) -> tuple[Tensor, Tensor | None]:
        mean = scatter(s.mean(-1, keepdim=True), batch, 0, num_graphs, "mean").index_select(0, batch)
        centred = s - mean
        var = scatter((centred * centred).mean(-1, keepdim=True), batch, 0, num_graphs, "mean").index_select(
            0, batch
        )
        s = centred / torch.sqrt(var + self.eps) * self.weight + self.bias
        if v is not None:
            sq = scatter((v * v).sum(1).mean(-1, keepdim=True), batch, 0, num_graphs, "mean").index_select(
                0, batch
            )
            v = v / torch.sqrt(sq + self.eps).unsqueeze(1)
        return s, v


class VectorMessages(nn.Module):
    """``mean_j (r_ij c0_ij + c1_ij * u_j)`` over each receiver's edges, as one fused tensor-product conv.

    Node features ``1x0e + Vx1o`` (a constant one and ``u = W_v v``) times edge
    features ``1x0e + 1x1o`` (one and ``r_ij``) into ``Vx1o``, channel-wise, with
    per-edge weights ``[c0, c1]``; no normalisation (path weight 3 cancels the
    1/sqrt(3) of ``wigner_3j(0, 1, 1)``). The fused kernel never stores the
    ``[E, 3, V]`` messages; on QM9-sized batches it is ~2.4x faster than plain
    torch for forward+backward (``benchmarks/eqgat_vector_messages.py``).

    Shapes: r_hat ``[E, 3]``, coef ``[E, V]`` (first layer) or ``[E, 2V]``, u
    ``[N, 3, V]`` or None (first layer) -> ``[N, 3, V]``.
    """

    def __init__(self, v_dim: int, first: bool) -> None:
        super().__init__()
        self.v_dim = v_dim
        irreps_x = "1x0e" if first else f"1x0e + {v_dim}x1o"
        instructions = [(0, 1, 0, "uvw", True, 3.0)] + ([] if first else [(1, 0, 0, "uvu", True, 3.0)])
        self.conv = TensorProductConv(
            irreps_x,
            "1x0e + 1x1o",
            f"{v_dim}x1o",
            instructions,
            shared_weights=False,
            irrep_normalization="none",
            path_normalization="none",
        )

    def forward(self, r_hat: Tensor, coef: Tensor, u: Tensor | None, edge_index: Tensor, n: int) -> Tensor:
        one = r_hat.new_ones(n, 1)
        x = one if u is None else torch.cat([one, u.transpose(1, 2).reshape(n, 3 * self.v_dim)], dim=1)
        sh = torch.cat([r_hat.new_ones(r_hat.shape[0], 1), r_hat], dim=1)
        out = self.conv(x, sh, coef, edge_index)  # [N, V * 3], e3nn layout
        degree = torch.bincount(edge_index[1], minlength=n).clamp_min(1).to(out.dtype)
        return (out / degree.unsqueeze(1)).reshape(n, self.v_dim, 3).transpose(1, 2)


class EQGATLayer(nn.Module):
    """One EQGAT-diff message-passing layer with position and edge updates.

    Per edge (j -> i) an MLP of invariants gives per-channel attention logits,
    vector-message coefficients, an edge update and a position gate:

    - ``s_i += sum_j softmax_j(a_ij) * W_s s_j``
    - ``v_i += mean_j (r_ij c0_ij + c1_ij * W_v v_j)``, ``r_ij = (p_j - p_i) / (1 + d_ij)``
    - ``p_i += w * m_i / (mean_G |m| + eps)``, ``m_i = mean_j g_ij r_ij``
    - ``e_ij <- W_post SiLU(e~_ij + e_ij)``
    followed by a gated equivariant update of (s, v).

    Shapes:
        ``s [N, S]``, ``v [N, 3, V]``, ``pos [N, 3]``, ``e [E, Ed]``,
        ``edge_index [2, E]``, ``batch [N]``.
    """

    def __init__(self, s_dim: int, v_dim: int, e_dim: int, first: bool = False, last: bool = False) -> None:
        super().__init__()
        self.s_dim, self.v_dim, self.e_dim = s_dim, v_dim, e_dim
        self.first, self.last = first, last
        self.norm = GraphNorm(s_dim)
        self.edge_pre = nn.Linear(e_dim, e_dim)
        n_coef = v_dim if first else 2 * v_dim  # no vector input in the first layer
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * s_dim + e_dim + 4, s_dim),
            nn.SiLU(),
            nn.Linear(s_dim, s_dim + n_coef + e_dim + 1),
        )
        self.w_s = nn.Linear(s_dim, s_dim)
        self.w_v = None if first else nn.Linear(v_dim, v_dim, bias=False)
        self.messages = VectorMessages(v_dim, first)
        self.edge_post = nn.Linear(e_dim, e_dim)
        self.pos_scale = nn.Parameter(torch.ones(1))
        # Gated equivariant update.
        self.v_split = nn.Linear(v_dim, 2 * v_dim, bias=False)
        self.gate = nn.Sequential(nn.Linear(s_dim + v_dim, s_dim), nn.SiLU(), nn.Linear(s_dim, v_dim + s_dim))
        self.v_out = None if last else nn.Linear(v_dim, v_dim, bias=False)

    def _edge_hidden(
        self, s: Tensor, dist: Tensor, dot: Tensor, e: Tensor, norm_p: Tensor, i: Tensor, j: Tensor
    ):
        """First edge-MLP layer on ``[s_i, s_j, d, p_i.p_j, e, |p_i|, |p_j|]`` without building the concatenation.

        The node blocks of the weight are applied per node and gathered (N x S x S
        work instead of E x 2S x S; E = n(n-1) per molecule); same parameters and
        result as ``edge_mlp[0]`` on the concatenated input.
        """
        w, b = self.edge_mlp[0].weight, self.edge_mlp[0].bias
        sd = self.s_dim
        node_i = s @ w[:, :sd].T
        node_j = s @ w[:, sd : 2 * sd].T
        rest = torch.cat([dist, dot, e, norm_p.index_select(0, i), norm_p.index_select(0, j)], dim=-1)
        return node_i.index_select(0, i) + node_j.index_select(0, j) + torch.addmm(b, rest, w[:, 2 * sd :].T)

    def forward(
        self,
        s: Tensor,
        v: Tensor,
        pos: Tensor,
        e: Tensor,
        edge_index: Tensor,
        batch: Tensor,
        num_graphs: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        j, i = edge_index[0], edge_index[1]
        n = s.shape[0]
        s, v = self.norm(s, None if self.first else v, batch, num_graphs)
        if self.first:
            v = s.new_zeros(n, 3, self.v_dim)
        # Geometry recomputed from the current positions (EQGAT-diff recomputes per layer).
        vec = pos.index_select(0, j) - pos.index_select(0, i)  # [E, 3]
        dist = torch.sqrt((vec * vec).sum(-1, keepdim=True).clamp_min(1e-6))  # [E, 1]
        r_hat = vec / (1.0 + dist)
        dot = (pos.index_select(0, i) * pos.index_select(0, j)).sum(-1, keepdim=True)
        norm_p = pos.norm(dim=-1, keepdim=True)
        e = self.edge_pre(e)
        h = self.edge_mlp[2](torch.nn.functional.silu(self._edge_hidden(s, dist, dot, e, norm_p, i, j)))
        n_coef = self.v_dim if self.first else 2 * self.v_dim
        att, coef, e_upd, gate = torch.split(h, [self.s_dim, n_coef, self.e_dim, 1], dim=-1)

        alpha = scatter_softmax(att, i, n)
        s = s + scatter(alpha * self.w_s(s).index_select(0, j), i, 0, n, "sum")

        v = v + self.messages(r_hat, coef, None if self.first else self.w_v(v), edge_index, n)

        m = scatter(gate * r_hat, i, 0, n, "mean")  # [N, 3]
        m_norm = scatter(m.norm(dim=-1, keepdim=True), batch, 0, num_graphs, "mean").index_select(0, batch)
        pos = pos + self.pos_scale * m / (m_norm + 1e-5)

        e = self.edge_post(torch.nn.functional.silu(e_upd + e))

        u, v_gate = torch.split(self.v_split(v), [self.v_dim, self.v_dim], dim=-1)
        u_norm = (u * u).sum(1).clamp_min(1e-6)  # [N, V]
        g, ds = torch.split(self.gate(torch.cat([s, u_norm], dim=-1)), [self.v_dim, self.s_dim], dim=-1)
        s = s + ds
        if self.v_out is not None:
            v = v + self.v_out(g.unsqueeze(1) * v_gate)
        return s, v, pos, e
