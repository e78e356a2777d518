"""What a solver is: a function of per-case parameters plus a description of it.

The description (``Solver``) lets the store size its arrays *without running the
solver*: ``parameters(options)``, ``outputs(options)`` and ``coords(options)``
are pure functions of the options. Built-in solvers declare all three; a plain
user function ``f(params, **options)`` is wrapped by ``Solver.from_function``
and its outputs are discovered by running it on one example case.

Example:
    >>> import torch
    >>> def double(params, scale=2.0):
    ...     return {"y": scale * params["a"]}
    >>> s = Solver.from_function(double)
    >>> s.outputs({}, example={"a": torch.tensor(1.0)})
    {'y': ((), ())}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .params import ParamInfo, prepare_params

#: Keyword names that ``solve`` takes for itself; no solver option may use them.
RESERVED_OPTIONS = ("chunk_size", "device", "dtype")

OutputInfo = tuple[tuple[str, ...], tuple[int, ...]]


class UnsolvableCase(ValueError):
    """A case the solver declares it cannot solve (``Solver.check_cases``); ``case`` is its index."""

    def __init__(self, message: str, case: int):
        super().__init__(message)
        self.case = case


def tracks_derivatives(*tensors: Any) -> bool:
    """Whether derivatives flow through these tensors, so a solver must stay out-of-place.

    True under reverse-mode autograd (``requires_grad`` with grad enabled),
    forward-mode dual tensors, and ``torch.func`` transforms (``jvp``, ``grad``,
    ``vmap``). Solvers use it to pick their fast in-place path only when it is safe.

    Example:
        >>> import torch
        >>> tracks_derivatives(torch.ones(2)), tracks_derivatives(torch.ones(2, requires_grad=True))
        (False, True)
    """
    from torch.autograd import forward_ad

    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if t.requires_grad and torch.is_grad_enabled():
            return True
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return True
        if forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, eq=False)
class Solver:
    """A PDE solver batched over cases, and the description the store needs.

    Attributes:
        name: registry name (``"rte1d"``) or import path of a user solver.
        fn: the solver. When ``batched`` it is called as
            ``fn(params, **options)`` with every tensor in ``params`` carrying a
            leading case axis, and returns ``{output: Tensor[cases, ...]}``.
            Otherwise it takes one case and ``solve`` vmaps it.
        default_options: every option the solver accepts, with its default.
            Options not listed here are rejected (unless ``accepts_any_option``).
        batched: whether ``fn`` is natively batched over cases.
        parameters_fn: ``options -> {name: ParamInfo}``; ``None`` means "unknown:
            accept any parameter, each with a leading case axis".
        outputs_fn: ``options -> {name: (dims, shape)}`` per case; ``None`` means
            discover by running on one case (``outputs(options, example=...)``).
        coords_fn: ``options -> {dim: numpy array}``; ``None`` means no coordinates.
        check_options: ``options -> None``, raising ``ValueError`` (with the fix)
            on bad values; called with the defaults already merged in.
        accepts_any_option: skip the unknown-option check (a user function with
            ``**kwargs``).
        description: one line for ``available_solvers`` and docs.
        jvp_fn: optional fast forward-mode derivative, called as
            ``jvp_fn(params, tangents, device=, dtype=, tangent_outputs=, **options)``
            with ``tangents[name]`` of shape ``[k, cases, ...]``; returns
            ``(outputs, output_tangents [k, cases, ...])``. Sweep sensitivities
            use it when present, else ``torch.func.jvp`` through ``solve``.
        check_cases: optional ``(params, options, first_case) -> None`` raising
            ``UnsolvableCase`` (naming case ``first_case + i`` and the fix) for cases
            the solver cannot solve, e.g. beyond a stability limit; ``params``
            as for ``fn`` (batched, options resolved). Sweep jobs run it over
            every case on the driver, before a store exists.
        performance_options: options that change how fast the solver runs, not
            its results (e.g. rte1d's ``compile``): kept out of a sweep job's
            spec hash, so changing them does not block a resume.
    """

    name: str
    fn: Callable[..., Mapping[str, Any]]
    default_options: Mapping[str, Any] = field(default_factory=dict)
    batched: bool = True
    parameters_fn: Callable[[dict[str, Any]], dict[str, ParamInfo]] | None = None
    outputs_fn: Callable[[dict[str, Any]], dict[str, OutputInfo]] | None = None
    coords_fn: Callable[[dict[str, Any]], dict[str, np.ndarray]] | None = None
    check_options: Callable[[dict[str, Any]], None] | None = None
    accepts_any_option: bool = False
    description: str = ""
    jvp_fn: Callable[..., Any] | None = None
    check_cases: Callable[..., None] | None = None
    performance_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_options", _frozen(self.default_options))
        clash = sorted(set(self.default_options) & set(RESERVED_OPTIONS))
        if clash:
            raise ValueError(f"solver {self.name!r}: option name(s) {clash} are reserved by solve(); rename them")

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        params: Mapping[str, Any],
        *,
        chunk_size: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> dict[str, torch.Tensor]:
        """Solve every case of ``params``: what ``pipeline.solvers.solve(self, params, ...)`` runs.

        Arguments as for ``solve``; returns ``{output: Tensor[cases, ...]}``.

        Example:
            >>> import torch
            >>> s = Solver.from_function(lambda params, k=1.0: {"y": k * params["a"]}, name="scale")
            >>> s.run({"a": torch.tensor([1.0, 2.0])}, k=3.0)["y"].tolist()
            [3.0, 6.0]
        """
        resolved = self.validate_options(options)
        infos = self.parameters_fn(resolved) if self.parameters_fn is not None else {}
        batch, n_cases = prepare_params(self.name, params, infos, device=device, dtype=dtype)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")

        if self.batched:

            def run(part: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
                return self.fn(part, **resolved)

        else:
            per_case = self.fn

            def run(part: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
                return torch.func.vmap(lambda case: per_case(case, **resolved))(part)

        def run_chunk(start: int, stop: int) -> Mapping[str, torch.Tensor]:
            part = {k: v[start:stop] for k, v in batch.items()}
            try:
                return _check_result(self.name, run(part), stop - start)
            except UnsolvableCase:
                if start and self.check_cases is not None:  # name the case by its index in params, not in the chunk
                    self.check_cases(part, resolved, start)
                raise

        chunk = n_cases if chunk_size is None else min(chunk_size, n_cases)
        if chunk == n_cases:
            return _check_result(self.name, run(batch), n_cases)
        if tracks_derivatives(*batch.values()):
            # out-of-place assembly keeps autograd / torch.func derivatives flowing
            pieces = [run_chunk(a, min(a + chunk, n_cases)) for a in range(0, n_cases, chunk)]
            return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
        outputs: dict[str, torch.Tensor] = {}
        for start in range(0, n_cases, chunk):
            stop = min(start + chunk, n_cases)
            result = run_chunk(start, stop)
            for k, v in result.items():
                if k not in outputs:  # preallocate once: no second copy of all outputs
                    outputs[k] = v.new_empty((n_cases, *v.shape[1:]))
                outputs[k][start:stop] = v
        return outputs

    # -- description used by the store (no solver run) ---------------------------------

    def validate_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Merge ``options`` over the defaults and check them; return the full option dict.

        Raises ``ValueError`` naming the option, the bad value and the fix.

        Example:
            >>> from pipeline.solvers import get_solver
            >>> get_solver("rte1d").validate_options({"nx": 64})["nx"]
            64
        """
        options = dict(options or {})
        if not self.accepts_any_option:
            unknown = sorted(set(options) - set(self.default_options))
            if unknown:
                key = unknown[0]
                known = ", ".join(sorted(self.default_options)) or "(none)"
                raise ValueError(
                    f"{self.name}: unknown option {key!r} (value {options[key]!r}); "
                    f"known options are: {known}. Check the spelling."
                )
        resolved = {**self.default_options, **options}
        if self.check_options is not None:
            self.check_options(resolved)
        return resolved

    def parameters(self, options: Mapping[str, Any] | None = None) -> dict[str, ParamInfo]:
        """The per-case parameters accepted under ``options`` (empty dict: not declared).

        Example:
            >>> from pipeline.solvers import get_solver
            >>> get_solver("rte1d").parameters({"nx": 64})["T0"].shape
            (64,)
        """
        if self.parameters_fn is None:
            return {}
        return self.parameters_fn(self.validate_options(options))

    def outputs(
        self, options: Mapping[str, Any] | None = None, example: Mapping[str, Any] | None = None
    ) -> dict[str, OutputInfo]:
        """Per-case ``{output: (dims, shape)}``, without the case axis.

        Declared solvers answer without running. A solver built from a plain
        function is run once on ``example`` (one case's parameters, no case
        axis) and its dims are named ``"<output>_dim<i>"``.

        Example:
            >>> from pipeline.solvers import get_solver
            >>> get_solver("rte1d").outputs({"nx": 400})["E"]
            (('time', 'x'), (50, 400))
        """
        resolved = self.validate_options(options)
        if self.outputs_fn is not None:
            return self.outputs_fn(resolved)
        if example is None:
            raise ValueError(
                f"{self.name}: this solver does not declare its outputs, so they are discovered "
                "by running it on one case; pass example={parameter: value of one case}"
            )
        one_case = {k: torch.as_tensor(v)[None] for k, v in example.items()}
        result = self.run(one_case, **dict(options or {}))
        return {k: (tuple(f"{k}_dim{i}" for i in range(v.ndim - 1)), tuple(v.shape[1:])) for k, v in result.items()}

    def coords(self, options: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Coordinate arrays of the output dims, e.g. ``{"x": cell centres, "time": save times}``."""
        resolved = self.validate_options(options)
        return {} if self.coords_fn is None else self.coords_fn(resolved)

    def __call__(self, params: Mapping[str, Any], **kwargs: Any):
        """Shorthand for ``pipeline.solvers.solve(self, params, **kwargs)``."""
        return self.run(params, **kwargs)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_function(cls, fn: Callable[..., Mapping[str, Any]], name: str | None = None) -> Solver:
        """Wrap a plain per-case function ``fn(params: dict[str, Tensor], **options)``.

        Its options are its keyword parameters (with their defaults); it is vmapped
        over cases by ``solve``; its outputs are discovered by running one case.

        Example:
            >>> s = Solver.from_function(lambda params, k=1.0: {"y": k * params["a"]}, name="scale")
            >>> dict(s.default_options)
            {'k': 1.0}
        """
        if not callable(fn):
            raise ValueError(f"solver {name or fn!r} is not callable; give a function f(params, **options)")
        defaults: dict[str, Any] = {}
        any_option = False
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature
            signature = None
            any_option = True
        if signature is not None:
            positional = [
                p
                for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            ]
            if len(positional) != 1:
                raise ValueError(
                    f"solver {name or getattr(fn, '__name__', fn)!r} must take exactly one positional "
                    f"argument (the dict of one case's parameters) and options as keywords; "
                    f"its signature is {signature}"
                )
            for p in list(signature.parameters.values()):
                if p is positional[0]:
                    continue
                if p.kind == p.VAR_KEYWORD:
                    any_option = True
                elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    if p.default is p.empty:
                        raise ValueError(
                            f"solver {name or fn.__name__!r}: option {p.name!r} has no default; "
                            "give every option a default value"
                        )
                    defaults[p.name] = p.default
        return cls(
            name=str(name or getattr(fn, "__qualname__", repr(fn))),
            fn=fn,
            default_options=defaults,
            batched=False,
            accepts_any_option=any_option,
            description=(inspect.getdoc(fn) or "").split("\n")[0],
        )


def _check_result(solver_name: str, result: Any, n_cases: int) -> dict[str, torch.Tensor]:
    if not isinstance(result, Mapping) or not all(isinstance(v, torch.Tensor) for v in result.values()):
        raise ValueError(
            f"{solver_name}: a solver must return a dict of output name -> tensor, got {type(result).__name__}"
        )
    for k, v in result.items():
        if v.ndim == 0 or v.shape[0] != n_cases:
            raise ValueError(
                f"{solver_name}: output {k!r} has shape {tuple(v.shape)} for {n_cases} cases; "
                "a batched solver must return tensors with the case axis first"
            )
    return dict(result)
