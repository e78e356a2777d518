"""The per-case parameters of a solver: what it declares (``ParamInfo``) and how a batch is built.

A leaf module (torch only): ``interface``, ``run`` and the solvers import it.

Example:
    >>> import torch
    >>> batch, n = prepare_params("demo", {"a": torch.zeros(3)}, {"a": ParamInfo(), "b": ParamInfo(default=1.0)})
    >>> n, batch["b"].tolist()
    (3, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ParamInfo:
    """One per-case parameter a solver accepts.

    Attributes:
        dims: dimension names per case: ``()`` for a scalar, ``("x",)`` for a profile.
        shape: shape per case, matching ``dims`` (``()`` or ``(nx,)``).
        default: value used when the parameter is not given (scalars only), or
            ``None`` when it has no default (or is derived from other parameters).
        description: one line for docs and error messages.
        excludes: parameters that cannot be given together with this one because
            they are an alternative way to set the same thing (rte1d's ``T0``
            profile excludes ``T0_mean``, ``T0_amplitude``, ...). When this one
            is given, ``solve`` does not fill in their defaults.
    """

    dims: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    default: float | None = None
    description: str = ""
    excludes: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``"scalar"`` or ``"profile"``."""
        return "scalar" if not self.shape else "profile"


def prepare_params(
    solver_name: str,
    params: Mapping[str, Any],
    infos: Mapping[str, ParamInfo],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Check names and shapes, convert to tensors, broadcast unbatched values; return ``(batch, n_cases)``.

    With declared parameters (``infos`` non-empty) unknown names are rejected,
    every value is cast to the floating ``dtype``, and parameters not given get
    their declared default (unless a given parameter ``excludes`` them); for undeclared (plain-function)
    solvers integer tensors keep their dtype and every value of ndim >= 1 is
    taken as batched.

    Example:
        >>> import torch
        >>> batch, n = prepare_params("demo", {"a": torch.zeros(3), "b": 2.0}, {})
        >>> n, batch["b"].shape
        (3, torch.Size([3]))
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"{solver_name}: params must be a dict of name -> tensor, got {type(params).__name__}")
    if infos:
        unknown = sorted(set(params) - set(infos))
        if unknown:
            raise ValueError(
                f"{solver_name}: unknown parameter {unknown[0]!r}; it accepts: {', '.join(infos)}. "
                "Check the spelling (options such as nx go as keyword arguments, not in params)"
            )
        for name in params:
            clash = [other for other in infos[name].excludes if other in params]
            if clash:
                raise ValueError(
                    f"{solver_name}: parameter {name!r} cannot be given together with {clash}: they are "
                    f"alternative ways to set the same thing; drop {name!r} or drop {clash}"
                )
    tensors: dict[str, torch.Tensor] = {}
    given: dict[str, torch.dtype] = {}  # the dtype each value counts as when dtype=None picks one
    for name, value in params.items():
        try:
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            given[name] = t.dtype
            if t.is_floating_point() and not hasattr(value, "dtype"):
                # Python numbers and lists: torch.as_tensor rounds them to float32 (the default dtype),
                # and a float64 solve would then run on 0.10000000149 for 0.1
                t = torch.as_tensor(value, dtype=torch.float64)
            tensors[name] = t
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{solver_name}: parameter {name!r} is not numeric ({err}); give numbers or tensors"
            ) from None

    if device is None:
        accelerators = {t.device for t in tensors.values() if t.device.type != "cpu"}
        if len(accelerators) > 1:
            raise ValueError(
                f"{solver_name}: parameters are on different devices {sorted(map(str, accelerators))}; "
                "move them to one device or pass device="
            )
        device = accelerators.pop() if accelerators else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{solver_name}: device={str(device)!r} but CUDA is not available here; "
            "pass device='cpu' or leave device=None"
        )
    if dtype is None:
        floating = [given[name] for name, t in tensors.items() if t.is_floating_point()]
        dtype = floating[0] if floating else torch.get_default_dtype()
        for d in floating[1:]:
            dtype = torch.promote_types(dtype, d)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{solver_name}: dtype must be a floating dtype such as torch.float64, got {dtype!r}")

    batched: dict[str, bool] = {}
    lengths: dict[str, int] = {}
    for name, t in tensors.items():
        if infos:
            shape = infos[name].shape
            if tuple(t.shape) == shape:
                batched[name] = False
            elif tuple(t.shape[1:]) == shape and t.ndim == len(shape) + 1:
                batched[name] = True
            else:
                batch_shape = "(cases" + "".join(f", {d}" for d in shape) + ")"
                raise ValueError(
                    f"{solver_name}: parameter {name!r} ({infos[name].kind}) has shape {tuple(t.shape)}; "
                    f"expected {shape} for one case or {batch_shape} for a batch. Check nx and the case axis"
                )
        else:
            batched[name] = t.ndim >= 1
        if batched[name]:
            lengths[name] = t.shape[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{solver_name}: parameters have different numbers of cases: "
            + ", ".join(f"{k}: {v}" for k, v in lengths.items())
            + "; give every batched parameter the same leading length"
        )
    n_cases = next(iter(lengths.values())) if lengths else 1
    if n_cases == 0:
        raise ValueError(f"{solver_name}: no cases to solve (the case axis has length 0)")

    batch: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        cast = dtype if (infos or t.is_floating_point()) else t.dtype
        t = t.to(device=device, dtype=cast)
        batch[name] = t if batched[name] else t.expand(n_cases, *t.shape)
    excluded = {other for name in params for other in infos[name].excludes} if infos else set()
    for name, info in infos.items():
        if name not in batch and name not in excluded and info.default is not None:
            value = torch.tensor(info.default, dtype=dtype, device=device)
            batch[name] = value.expand(n_cases, *info.shape)
    return batch, n_cases
