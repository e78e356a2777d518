"""Batched derivatives of PyTorch functions: Taylor-mode jets and torch.func strategies.

``derivatives(fn, x, quantities)`` returns value / jacobian / hessian /
laplacian / dK for every sample of ``x``; ``compute_derivatives`` also says how
(method, chunk size, peak memory, why Taylor mode was not used);
``hvp`` gives Hessian-vector products that share one linearization.

Example:
    >>> import torch
    >>> from pipeline.engine import derivatives
    >>> out = derivatives(lambda x: (x**3).sum(), torch.ones(4, 2), ("value", "hessian"))
    >>> out["hessian"].shape
    torch.Size([4, 2, 2])
"""

from .api import METHODS, DerivativeResult, compute_derivatives, compute_operators, derivatives
from .hvp import hvp
from .hvp_operator import HessianOperator, conjugate_gradient, newton_step, per_sample_operator
from .operators import OperatorOptions

__all__ = [
    "METHODS",
    "DerivativeResult",
    "HessianOperator",
    "OperatorOptions",
    "compute_derivatives",
    "compute_operators",
    "conjugate_gradient",
    "derivatives",
    "hvp",
    "newton_step",
    "per_sample_operator",
]
