"""Batched derivatives of PyTorch functions: Taylor-mode jets and torch.func strategies.

Example:
    >>> import torch
    >>> from pipeline.derivatives import derivatives
    >>> out = derivatives(lambda x: (x**3).sum(), torch.ones(4, 2), ("value", "hessian"))
    >>> out["hessian"].shape
    torch.Size([4, 2, 2])
"""

from .api import METHODS, DerivativeResult, compute_derivatives, derivatives

__all__ = ["METHODS", "DerivativeResult", "compute_derivatives", "derivatives"]
