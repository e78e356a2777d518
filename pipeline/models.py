"""The functions a job differentiates: the built-in MLP and user callables by import path.

``build_function(spec.function, dtype, device)`` returns a callable mapping
ONE sample ``[*in_shape]`` to its output ``[*out_shape]``. Checkpoints load
with ``torch.load(weights_only=True)``, so a checkpoint file cannot run code.

Example:
    >>> from pipeline.spec import MLPFunction
    >>> f = build_function(MLPFunction(kind="mlp", in_features=2, out_features=3))
    >>> f(torch.zeros(2)).shape
    torch.Size([3])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import BadInput
from .imports import ImportPathError, describe_import_error, import_object
from .spec.derivative import ImportFunction, MLPFunction


class FunctionError(BadInput, ValueError):
    """The job's function cannot be imported, built or evaluated."""


class Sin(nn.Module):
    """``sin`` as a module (torch has no ``nn.Sin``)."""

    def forward(self, x):
        return torch.sin(x)


class Cos(nn.Module):
    def forward(self, x):
        return torch.cos(x)


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "sin": Sin,
    "cos": Cos,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "exp": Exp,
}


def make_mlp(
    in_features: int, hidden: list[int], out_features: int, activation: str = "tanh", seed: int = 0
) -> nn.Sequential:
    """The built-in MLP: Linear layers with ``activation`` between them, seeded init.

    Example:
        >>> make_mlp(2, [128] * 4, 150).forward(torch.zeros(5, 2)).shape
        torch.Size([5, 150])
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(_ACTIVATIONS[activation]())
        return nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(generator_state)


def import_target(target: str, python_path: list[str] | tuple[str, ...] = ()) -> object:
    """Import ``package.module:attr`` (dotted attributes allowed), with extra search paths."""
    try:
        return import_object(target, python_path)
    except ImportPathError as err:
        if err.reason == "import":
            raise FunctionError(
                f"function.target: cannot import module {err.module!r} ({err.cause}); check the spelling, install "
                "the package, or put its directory in function.python_path "
                f"(searched: {list(python_path) or 'sys.path'})"
            ) from None
        if err.reason == "broken":
            raise FunctionError(
                f"function.target: importing module {err.module!r} failed: {describe_import_error(err.cause or err)}; "
                "fix the module (python -c 'import " + err.module + "' shows the traceback)"
            ) from None
        raise FunctionError(
            f"function.target: {err.module!r} has no attribute {err.attribute!r}; available names include "
            f"{err.public_names()[:20]}"
        ) from None


def _checkpoint_source(path: str):
    """A local path as is; a URL's bytes as a file object (a missing object raises FileNotFoundError)."""
    from . import storage

    if storage.is_remote(path):
        import io

        return io.BytesIO(storage.read_bytes(path))
    return path


def _load_checkpoint(module: nn.Module, path: str) -> None:
    try:
        state = torch.load(_checkpoint_source(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FunctionError(f"function.checkpoint: {path} does not exist; check the path") from None
    except Exception as err:  # unpickling errors come in many types
        raise FunctionError(
            f"function.checkpoint: {path} cannot be loaded with weights_only=True ({err}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise FunctionError(f"function.checkpoint: {path} does not fit the model: {err}") from None


def build_function(spec, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Callable:
    """The per-sample callable of a job's function spec, in ``dtype`` on ``device``."""
    if isinstance(spec, MLPFunction):
        module = make_mlp(spec.in_features, list(spec.hidden), spec.out_features, spec.activation, spec.seed)
        if spec.checkpoint:
            _load_checkpoint(module, spec.checkpoint)
        return module.to(device=device, dtype=dtype).eval()
    if isinstance(spec, ImportFunction):
        return _build_imported(spec, dtype, device)
    raise TypeError(f"unknown function spec {type(spec).__name__}")


def _build_imported(spec: ImportFunction, dtype, device) -> Callable:
    obj: Any = import_target(spec.target, spec.python_path)  # a class, factory, module or function: checked below
    fn: Any
    try:
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            fn = obj(**spec.kwargs)
        elif spec.factory:
            fn = obj(**spec.kwargs)
        elif isinstance(obj, nn.Module):
            if spec.kwargs:
                raise FunctionError("function.kwargs: an nn.Module instance takes no kwargs; remove them")
            fn = obj
        elif callable(obj):
            fn = _bind(obj, spec.kwargs) if spec.kwargs else obj
        else:
            raise FunctionError(f"function.target: {spec.target} is a {type(obj).__name__}, not a callable")
    except TypeError as err:
        raise FunctionError(f"function.kwargs: {spec.target} rejected {spec.kwargs!r}: {err}") from None
    if not callable(fn):
        raise FunctionError(f"function.factory: {spec.target}(**kwargs) returned {type(fn).__name__}, not a callable")
    if isinstance(fn, nn.Module):
        if spec.checkpoint:
            _load_checkpoint(fn, spec.checkpoint)
        return fn.to(device=device, dtype=dtype).eval()
    if spec.checkpoint:
        raise FunctionError("function.checkpoint: only an nn.Module can load a checkpoint; remove the key")
    return fn


def _bind(fn: Callable, kwargs: dict) -> Callable:
    def bound(x):
        return fn(x, **kwargs)

    bound.__name__ = getattr(fn, "__name__", "function")
    return bound


def probe_output_shape(fn: Callable, samples: torch.Tensor) -> tuple[int, ...]:
    """Evaluate ``fn`` on each of ``samples`` (real input samples, ``[k, *in_shape]``) and return its output shape.

    Real samples, not zeros: a function whose domain leaves out 0 (``cholesky``
    of SPD matrices, ``log``) is valid on its inputs. Every failure is a
    ``FunctionError`` naming the sample.

    Example:
        >>> probe_output_shape(torch.log, torch.ones(2, 3))
        (3,)
    """
    if len(samples) == 0:
        raise ValueError("probe_output_shape needs at least one sample")
    shapes = []
    for i, x in enumerate(samples):
        try:
            with torch.no_grad():
                y = fn(x)
        except Exception as err:
            raise FunctionError(
                f"function: evaluating it on input sample {i} (shape {list(x.shape)}) failed: "
                f"{type(err).__name__}: {err}; the function must map ONE sample (no batch axis) to its output"
            ) from None
        if not isinstance(y, torch.Tensor):
            raise FunctionError(f"function: must return a tensor, returned {type(y).__name__}")
        if not y.is_floating_point():
            raise FunctionError(f"function: must return a floating-point tensor, returned {y.dtype}")
        if math.prod(y.shape) == 0:
            raise FunctionError(f"function: returned an empty tensor of shape {list(y.shape)}")
        shapes.append(tuple(y.shape))
    if len(set(shapes)) > 1:
        raise FunctionError(
            f"function: returned outputs of different shapes on input samples 0..{len(shapes) - 1} "
            f"({[list(s) for s in shapes]}); the output shape must not depend on the sample"
        )
    return shapes[0]
