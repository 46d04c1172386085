"""Curvature of a model's loss in its named parameters, from ``torch.func`` products.

``operator``  the Hessian, Gauss-Newton and Fisher products as one operator (:class:`CurvatureOperator`)
``geometry``  metric inner products, cosines, the optimal scale λ*, Gram matrices
``bounds``    Proposition 2′'s second-order terms (proofs/02)
"""
