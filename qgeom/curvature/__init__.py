"""Curvature of a model's loss in its named parameters, from ``torch.func`` products.

``operator``  the Hessian, Gauss-Newton, Fisher and layer-metric products as one operator (:class:`CurvatureOperator`)
``inputs``    what it accepts: parameters (mapping, list, omitted), scopes, one batch or an iterable
``losses``    any loss for the Hessian; the loss's output Hessian for the GGN/Fisher (cross-entropy, MSE)
``products``  one batch's products: the ``torch.func`` formulas the operator reduces
``flat``      flat (P,) views of the products: ``op @ x``, ``flat_matmat``, ``to_scipy``
``probe``     the probe set: its hash and sanity, the reduction over it (data parallel), model checks
``geometry``  metric inner products, cosines, the optimal scale λ*, Gram matrices
``forms``     quadratic forms read as cosines and scales: roundoff floors, indefinite forms, signed ratios
``layer``     GPTQ's metric: each quantized Linear's input second moment H_ℓ = X_ℓX_ℓᵀ/N, forward passes only
``layer_geometry``  a pair in that metric, pooled and per layer: cos_layer, λ*
``bounds``    Proposition 2′'s second-order terms (proofs/02_second_order.md)
"""
