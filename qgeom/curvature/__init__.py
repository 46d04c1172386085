"""Curvature of a model's loss in its named parameters, from ``torch.func`` products.

``operator``  the Hessian, Gauss-Newton and Fisher products as one operator (:class:`CurvatureOperator`)
``products``  one batch's products: the ``torch.func`` formulas the operator reduces
``probe``     the probe set: its hash and sanity, the reduction over it (data parallel), model checks
``geometry``  metric inner products, cosines, the optimal scale λ*, Gram matrices
``bounds``    Proposition 2′'s second-order terms (proofs/02_second_order.md)
"""
