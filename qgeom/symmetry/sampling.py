"""Random elements of every kind (:func:`random_symmetry`, :data:`KINDS`), and which kinds a
model has (:func:`applicable_kinds`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgeom.symmetry.catalogue import (
    head_permutation, layernorm_folding, layerscale_folding, mlp_permutation, qk_mixing, residual_permutation, vo_mixing,
)
from qgeom.symmetry.element import Symmetry
from qgeom.symmetry.layout import UnsupportedSymmetryError, layout_of

MIXING_MODES = ("mixing", "orthogonal", "diagonal", "scalar", "signed_permutation")

KINDS: tuple[str, ...] = (
    "head_permutation", *(f"qk_{m}" for m in MIXING_MODES), *(f"vo_{m}" for m in MIXING_MODES),
    "mlp_permutation", "layernorm_folding", "layerscale_folding", "residual_permutation",
)


def _perm(gen: torch.Generator, n: int) -> Tensor:
    """A random permutation, never the identity when n ≥ 2."""
    p = torch.randperm(n, generator=gen)
    return p.roll(1) if n >= 2 and torch.equal(p, torch.arange(n)) else p


def _spread(gen: torch.Generator, shape: tuple[int, ...], strength: float) -> Tensor:
    """strength · u with u ∈ [−½, ½] per last-axis row, both ends attained when the row has ≥ 2 entries."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5
    if shape[-1] >= 2:
        u[..., 0], u[..., 1] = -0.5, 0.5
        u = u.gather(-1, torch.argsort(torch.rand(shape, generator=gen), dim=-1))
    return strength * u


def _orth(gen: torch.Generator, m: int, d: int) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(m, d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def random_blocks(gen: torch.Generator, m: int, d: int, mode: str, strength: float) -> Tensor:
    """m random d×d invertible matrices (float64) of ``mode`` (see :data:`MIXING_MODES`).

    mixing: U diag(e^{u}) Vᵀ with U, V Haar-orthogonal, condition number e^strength (d ≥ 2);
    orthogonal: Haar; diagonal: diag(e^{u}) (positive, log-spread = strength); scalar: c_h·I,
    log c_h spread over [−strength/2, strength/2] across the m heads (±strength/2 when m = 1);
    signed_permutation: a random permutation with random signs.
    """
    eye = torch.eye(d, dtype=torch.float64).expand(m, d, d)
    if mode == "scalar":
        if m >= 2:  # distinct factors across heads, spread = strength
            return eye * torch.exp(_spread(gen, (m,), strength)).reshape(m, 1, 1)
        sign = torch.randint(0, 2, (m, 1, 1), generator=gen).double() * 2 - 1
        return eye * torch.exp(sign * strength / 2)
    if mode == "diagonal":
        return torch.diag_embed(torch.exp(_spread(gen, (m, d), strength)))
    if mode == "signed_permutation":
        signs = torch.randint(0, 2, (m, d, 1), generator=gen).double() * 2 - 1
        return torch.stack([eye[0][_perm(gen, d)] for _ in range(m)]) * signs
    if mode == "orthogonal":
        return _orth(gen, m, d)
    if mode == "mixing":
        return _orth(gen, m, d) @ torch.diag_embed(torch.exp(_spread(gen, (m, d), strength))) @ _orth(gen, m, d).mT
    raise ValueError(f"unknown mixing mode {mode!r}; known: {', '.join(MIXING_MODES)}")


def random_symmetry(model, kind: str, *, strength: float = 1.0, seed: int = 0, blocks=None) -> Symmetry:
    """A random element of ``kind`` (see :data:`KINDS`) acting on every block (or ``blocks``).

    strength: log condition number of the GL blocks (e.g. 1.0 → κ = e) and the log-spread of
    the scalings (LayerNorm/LayerScale folding, diagonal and scalar mixing). Permutations are never the identity (when there are ≥ 2 things to permute).
    """
    L = layout_of(model)
    gen = torch.Generator().manual_seed(seed)
    idx = list(range(L.depth)) if blocks is None else [int(b) for b in blocks]
    H, d, D = L.num_heads, L.head_dim, L.embed_dim
    if kind == "head_permutation":
        return head_permutation(L, {i: _perm(gen, H) for i in idx})
    if kind.startswith(("qk_", "vo_")) and kind[3:] in MIXING_MODES:
        mats = {i: random_blocks(gen, H, d, kind[3:], strength) for i in idx}
        return qk_mixing(L, mats, kind) if kind.startswith("qk_") else vo_mixing(L, mats, kind)
    if kind == "mlp_permutation":
        return mlp_permutation(L, {i: _perm(gen, L.shapes[f"blocks.{i}.mlp.fc1.weight"][0]) for i in idx})
    if kind == "layernorm_folding":
        sites = [n for n in L.fold_sites if blocks is None or (n.startswith("blocks.") and int(n.split(".")[1]) in idx)]
        return layernorm_folding(L, {n: torch.exp(_spread(gen, (D,), strength)) for n in sites})
    if kind == "layerscale_folding":
        return layerscale_folding(L, {f"blocks.{i}.ls{j}": torch.exp(_spread(gen, (D,), strength)) for i in idx for j in (1, 2)})
    if kind == "residual_permutation":
        return residual_permutation(L, _perm(gen, D))
    raise ValueError(f"unknown symmetry kind {kind!r}; known: {', '.join(KINDS)}")


def applicable_kinds(model) -> dict[str, str | None]:
    """Each kind → None if the model has it, else the reason it does not."""
    out = {}
    for kind in KINDS:
        try:
            random_symmetry(model, kind, blocks=[0] if layout_of(model).depth else [])
            out[kind] = None
        except UnsupportedSymmetryError as e:
            out[kind] = str(e)
    return out
