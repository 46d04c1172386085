"""The names qgeom's functions, configs and command line share, declared once.

Plain data (no torch), so the command line can offer them as choices while ``--help`` stays light.
"""

from __future__ import annotations

#: Which tensors of a parameter dict a vector lives on (:func:`qgeom.params.in_scope`).
SCOPES = ("quantized", "backbone", "all")
#: Curvature metrics M of the loss: the Hessian, the Gauss-Newton matrix and the empirical Fisher
#: (the transfer run's metrics).
METRICS = ("hessian", "ggn", "fisher")
#: Every metric a curvature operator takes: the loss's, and GPTQ's block-diagonal layer-input
#: metric ``layer`` (X_ℓX_ℓᵀ/N per quantized Linear, from forward passes: :mod:`qgeom.curvature.layer`).
GEOMETRY_METRICS = METRICS + ("layer",)
#: Objectives: the full-precision loss at θ (``fp``), the STE surrogate of the quantized loss (``ste``).
OBJECTIVES = ("fp", "ste")
#: The controls a transfer run can add (:mod:`qgeom.experiment.controls`, plus the donors'
#: vectors from a θ_0 pretrained with another seed), also their method names in the accuracy table.
RUN_CONTROLS = ("random_rows", "row_permuted", "negated", "other_basin")
#: Weight quantizers (:mod:`qgeom.quantizers`): round-to-nearest, GPTQ, AWQ — all onto the same grid.
QUANTIZERS = ("rtn", "gptq", "awq")
#: Where a run's donor vectors come from: ρ_D = θ_D,QAT − θ_D, or the donor's own GPTQ/AWQ weights − θ_D.
VECTOR_SOURCES = ("qat", "gptq", "awq")
