"""qgeom: the geometry of quantization vectors in Vision Transformers.

The names a researcher needs for their own model are available here, loaded when first used
(PEP 562 module ``__getattr__``), so ``import qgeom`` and ``qgeom --help`` import no torch:

* curvature: :class:`CurvatureOperator` (Hessian, GGN, Fisher of any module and loss, and GPTQ's
  layer-input metric ``layer``; ``op @ v``, ``to_scipy()``), :func:`hvp`, :func:`ggn_vp`, :func:`fisher_vp`;
* geometry: :func:`metric_cosine`, :func:`hessian_cosine`, :func:`ggn_cosine`,
  :func:`fisher_cosine`, :func:`optimal_scale`, :func:`recovered_fraction`, :func:`gram`,
  :func:`pair_geometry`, :func:`geometry_of_pair`, :func:`quadratic_model`, :func:`layer_geometry`, …;
* spectra: :func:`eigsh`, :func:`hutchinson_trace`, :func:`spectral_density` (any operator:
  qgeom's, scipy's, curvlinops', a matrix, a callable with ``n=``);
* symmetries: :class:`Symmetry` (``g.act_point``, ``g.act_tangent``, ``g.act_covector``,
  ``g.apply_to(module)``), :func:`random_symmetry`, the catalogue's constructors,
  :func:`check_invariance`, :func:`assert_invariant` (its hypothesis strategies:
  :mod:`qgeom.testing`, ``pip install qgeom[testing]``);
* models, parameters, files: :func:`create_model`, :func:`without_fused_attention`,
  :func:`from_model`, :func:`flatten`, :func:`unflatten`, :class:`QuantSpec`, :func:`ptq`,
  :func:`load_params`, :func:`save_params`.

Each name lives in one module (``qgeom.curvature.operator``, ``qgeom.curvature.geometry``, …);
this list only points at it, so ``qgeom.X is qgeom.<module>.X``.
"""

from importlib import import_module

__version__ = "0.1.0"

_HOMES = {
    "qgeom.curvature.operator": ("CurvatureOperator", "fisher_vp", "ggn_vp", "hvp"),
    "qgeom.curvature.losses": ("LossError",),
    "qgeom.curvature.geometry": (
        "GeometryResult", "PairGeometry", "directional_gradients", "eigenbasis_projection", "fisher_cosine",
        "geometry_of_pair", "ggn_cosine", "gram", "hessian_cosine", "metric_cosine", "metric_inner", "optimal_scale",
        "pair_geometry", "quadratic_model", "recovered_fraction"),
    "qgeom.curvature.layer_geometry": ("layer_geometry",),
    "qgeom.spectra.eigsh": ("EigenResult", "eigsh"),
    "qgeom.spectra.density": ("hutchinson_trace", "spectral_density"),
    "qgeom.spectra.lanczos": ("FlatOperator",),
    "qgeom.symmetry": (
        "Symmetry", "applicable_kinds", "head_permutation", "layernorm_folding", "layerscale_folding",
        "mlp_permutation", "qk_mixing", "random_symmetry", "residual_permutation", "vo_mixing"),
    "qgeom.symmetry.invariance": ("check_invariance",),
    "qgeom.testing": ("assert_invariant",),
    "qgeom.models": ("create_model", "without_fused_attention"),
    "qgeom.params": ("flatten", "from_model", "inner", "norm", "unflatten"),
    "qgeom.quant": ("QuantSpec", "ptq"),
    "qgeom.io": ("load_params", "save_params"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str):
    """Import the module a top-level name lives in, on first use, and keep the name here."""
    if name not in _HOME_OF:
        raise AttributeError(f"module 'qgeom' has no attribute {name!r}")
    value = getattr(import_module(_HOME_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
