"""Loading a job file: YAML, ``--set`` overrides, error messages, path resolution, JSON schema, hash and diff.

``load_spec(path, overrides)`` reads a job file, applies ``--set
key.path=value`` overrides, validates it once against the model of its
``kind`` (``pipeline.kinds``) and returns a frozen job. Every problem becomes a
``SpecError`` whose lines name the key path, the bad value and the fix; the key
paths and the allowed keys are read off the models, so a new kind or a new
tagged variant needs nothing here. The fix is the field's own where its type
carries one (``base.Fix``), else its error type's (``_FIXES``), with the
field's default as an example of a bound. The YAML itself is read by
``yamltext``: a key given twice is an error, a syntax error one line.

Example:
    >>> spec = load_spec("jobs/quickstart.yaml", overrides=["inputs.n=1000"])
    >>> spec.inputs.n
    1000
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from .. import kinds
from .base import SCHEMA_VERSION, Fix, Job, SpecError, hash_view
from .yamltext import DuplicateKeyError, describe_yaml_error, load_yaml


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.path=value`` into its path and YAML-parsed value.

    Example:
        >>> parse_override("inputs.n=1000")
        (['inputs', 'n'], 1000)
    """
    if "=" not in text:
        raise SpecError([f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set inputs.n=1000"])
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise SpecError([f"--set {text!r}: the key path is empty; e.g. --set inputs.n=1000"])
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except DuplicateKeyError as err:
        raise SpecError(
            [f"--set {text!r}: {describe_yaml_error(DuplicateKeyError(path + err.path, err.lines))}"]
        ) from None
    except yaml.YAMLError as err:
        raise SpecError([f"--set {text!r}: {describe_yaml_error(err)}"]) from None
    return path, _number(value)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _number(value: Any) -> Any:
    """``'1e3'`` (a string to YAML 1.1, which wants ``1.0e3``) -> ``1000``; a whole float -> int; else as is.

    >>> _number("1e3"), _number("2.5e-1"), _number(1.0e3), _number("1e3x"), _number([1, 2])
    (1000, 0.25, 1000, '1e3x', [1, 2])
    """
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of the raw job data with ``key.path=value`` overrides applied."""
    data = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_list_index(text, path, i, node)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                where = ".".join(path[: i + 1])
                raise SpecError(
                    [f"--set {text!r}: {where} is {child!r}, not a mapping, so it has no key {path[i + 1]!r}"]
                )
            node = child
        if isinstance(node, list):
            node[_list_index(text, path, len(path) - 1, node)] = value
        else:
            node[path[-1]] = value
    return data


def _list_index(text: str, path: list[str], i: int, items: list) -> int:
    """The list index ``path[i]`` of an override (``inputs.axes.0.num=10``), checked against the list's length."""
    where = ".".join(path[:i])
    try:
        index = int(path[i])
    except ValueError:
        raise SpecError(
            [
                f"--set {text!r}: {where} is a list, so the next key must be an index 0..{len(items) - 1}, "
                f"not {path[i]!r}"
            ]
        ) from None
    if not -len(items) <= index < len(items):
        raise SpecError(
            [
                f"--set {text!r}: {where} has {len(items)} items, so index {index} is out of range; "
                f"use 0..{len(items) - 1}"
            ]
        )
    return index


# ------------------------------------------------------------ error messages


@dataclass(frozen=True)
class _Step:
    """One item of a pydantic error location, read against the model: what it is and the type below it."""

    part: str  # what the user's file calls it ('' for union members and tags, which the file never names)
    node: Any  # the type below it (None: not known)
    member: bool = False  # a member of a union without a discriminator (pydantic names it by type)


def _unwrap(annotation: Any) -> tuple[Any, str | None]:
    """``annotation`` without ``Annotated`` and ``None`` members, and its discriminator (if any)."""
    discriminator = None
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *metadata = typing.get_args(annotation)
            for meta in metadata:
                found = getattr(meta, "discriminator", None)
                found = getattr(found, "discriminator", found)  # a pydantic Discriminator around a key name
                if isinstance(found, str):
                    discriminator = found
        elif origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation, discriminator
            annotation = members[0]
        else:
            return annotation, discriminator


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _tag_values(model: type[BaseModel], key: str) -> tuple[Any, ...]:
    field = model.model_fields.get(key)
    return typing.get_args(_unwrap(field.annotation)[0]) if field is not None else ()


def _step(node: Any, discriminator: str | None, item: Any) -> _Step:
    """What ``item`` (the next location item) is below ``node``."""
    if _is_model(node):
        field = node.model_fields.get(item) if isinstance(item, str) else None
        if field is None:
            return _Step(str(item), None)  # an unknown key (extra_forbidden) or a model-level entry
        annotation, inner = _unwrap(field.annotation)
        return _Step(item, (annotation, inner or field.discriminator))
    origin, args = typing.get_origin(node), typing.get_args(node)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        if discriminator is not None:  # pydantic puts the tag of the chosen member in the location
            chosen = [m for m in members if _is_model(m) and item in _tag_values(m, discriminator)]
            return _Step("", (chosen[0], None) if len(chosen) == 1 else None)
        # otherwise the member whose error this is, by name: a model's name is its class name
        named = [m for m in members if _is_model(m) and m.__name__ == item]
        others = [m for m in members if not _is_model(m)]
        if named:
            return _Step("", (named[0], None), member=True)
        return _Step("", _unwrap(others[0]) if len(others) == 1 else None, member=True)
    if isinstance(item, int):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return _Step(f"[{item}]", _unwrap(args[item]) if 0 <= item < len(args) else None)
        if origin in (list, tuple, set, frozenset) and args:
            return _Step(f"[{item}]", _unwrap(args[0]))
        return _Step(f"[{item}]", None)
    if origin in (dict, Mapping) and len(args) == 2:
        return _Step(str(item), _unwrap(args[1]))
    return _Step(str(item), None)


def _steps(model: type[BaseModel], loc: tuple) -> list[_Step]:
    """The location of a pydantic error read against ``model``, one step per item."""
    steps = []
    below: Any = (model, None)
    for item in loc:
        node, discriminator = below if below is not None else (None, None)
        step = (
            _step(node, discriminator, item)
            if node is not None
            else _Step(f"[{item}]" if isinstance(item, int) else str(item), None)
        )
        steps.append(step)
        below = step.node
    return steps


def key_path(model: type[BaseModel], loc: tuple) -> str:
    """The key path in the job file of a pydantic error location, e.g. ``inputs.axes[0].num``.

    Union tags and member names, which pydantic puts in the location, are left
    out: the user knows only the keys of their file.

    Example:
        >>> from pipeline.spec import DerivativeJob
        >>> key_path(DerivativeJob, ("inputs", "grid", "axes", 0, "num"))
        'inputs.axes[0].num'
    """
    parts = [step.part for step in _steps(model, loc) if step.part]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The keys of the mapping that holds the last item of ``loc`` (an unknown key), or ``None`` when not a model.

    Example:
        >>> from pipeline.spec import DerivativeJob
        >>> allowed_keys(DerivativeJob, ("inputs", "grid", "axes", 0, "step"))
        ['high', 'low', 'num']
    """
    steps = _steps(model, loc[:-1])
    node = steps[-1].node if steps else (model, None)
    if node is not None and _is_model(node[0]):
        return sorted(node[0].model_fields)
    return None


def field_at(model: type[BaseModel], loc: tuple) -> FieldInfo | None:
    """The model field an error location ends at (union members below it skipped), or ``None``.

    Example:
        >>> from pipeline.spec import SweepJob
        >>> field_at(SweepJob, ("sweep", "grid", "axes")).description
        'name -> values or {low, high, num}'
        >>> field_at(SweepJob, ("sweep", "grid", "axes", "alpha")) is None  # a value of the mapping
        True
    """
    found = None
    below: Any = (model, None)
    for item in loc:
        if below is None:
            return None
        node, discriminator = below
        step = _step(node, discriminator, item)
        if _is_model(node) and isinstance(item, str) and item in node.model_fields:
            found = node.model_fields[item]
        elif step.part:  # deeper than the field: into a list or a mapping of it
            found = None
        below = step.node
    return found


# the fix of an error type, formatted with the error's ``ctx`` ("{ge}"); ``{number}``: a whole number or a number
_FIXES = {
    "missing": "add this key",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "float_parsing": "use a number",
    "finite_number": "use a finite number (not nan or inf)",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "float_type": "use a number",
    "int_parsing_size": "use a smaller whole number",
    "string_type": "write it as text (in quotes if YAML reads it as something else)",
    "string_too_short": "give a non-empty value",
    "list_type": "write a list in brackets, e.g. [a, b] (see `pipeline schema`)",
    "tuple_type": "write a list in brackets, e.g. [a, b] (see `pipeline schema`)",
    "dict_type": "write a mapping in braces, e.g. {{key: value}} (see `pipeline schema`)",
    "model_type": "write a mapping of its keys in braces (see `pipeline schema`)",
    "greater_than": "use {number} > {gt}",
    "greater_than_equal": "use {number} >= {ge}",
    "less_than_equal": "use {number} <= {le}",
    "too_short": "add at least {min_length} (see `pipeline schema`)",
    "union_tag_invalid": "set 'kind' to one of the listed values",
    "union_tag_not_found": "add a 'kind' key",
}
# the ctx key of a bound and whether a value keeps it (the field's default is then an example)
_BOUNDS = {
    "greater_than": ("gt", float.__gt__),
    "greater_than_equal": ("ge", float.__ge__),
    "less_than_equal": ("le", float.__le__),
}


def _fix(kind: str, ctx: dict[str, Any], field: FieldInfo | None) -> str | None:
    """The fix of an error: the field's own (``Fix`` beside its type), else its type's, with an example.

    The example of a bound is the field's default where it keeps the bound:
    ``execution.retries: -1`` -> "use a whole number >= 0, e.g. 2".
    """
    own = [
        meta.text
        for meta in (field.metadata if field is not None else ())
        if isinstance(meta, Fix) and (meta.kinds is None or kind in meta.kinds)
    ]
    if own and kind != "value_error":  # the model's own checks say their fix themselves
        return own[0]
    template = _FIXES.get(kind)
    if template is None:
        return None
    name, keeps = _BOUNDS.get(kind, ("", None))
    bound = ctx.get(name)  # pydantic gives the bound in the field's type: 0 for an int, 0.0 for a float
    whole = isinstance(bound, int) and not isinstance(bound, bool)
    if isinstance(bound, float) and bound.is_integer():
        ctx = {**ctx, name: int(bound)}
    try:
        fix = template.format(number="a whole number" if whole else "a number", **ctx)
    except (KeyError, IndexError, ValueError):
        return None
    default = field.default if field is not None else None
    if (
        keeps is not None
        and isinstance(default, (int, float))
        and not isinstance(default, bool)
        and isinstance(bound, (int, float))
        and keeps(float(default), float(bound))
    ):
        fix += f", e.g. {default}"
    return fix


def _message(kind: str, msg: str, ctx: dict[str, Any]) -> str:
    """Pydantic's message in the file's words where it has none of its own."""
    if kind == "too_short":
        what = "entry" if ctx.get("field_type") == "Dictionary" else "item"
        return f"needs at least {ctx.get('min_length')} {what}, got {ctx.get('actual_length')}"
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    loc = tuple(error.get("loc", ()))
    path = key_path(model, loc)
    kind = error.get("type", "")
    value = error.get("input")
    ctx = dict(error.get("ctx") or {})
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, loc)
        allowed_note = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        key = loc[-1] if loc else None
        if len(loc) > 1 and key in model.model_fields and key not in ("name", "kind", "schema_version"):
            # e.g. `fixed:` written inside `sweep:`: the job has that key, one level up
            return f"{path}: unknown key here (value {value!r}); {key} is a key at the top level of the job file: move it there"
        return f"{path}: unknown key (value {value!r}); remove it or fix its spelling{allowed_note}"
    if kind == "missing":
        return f"{path}: required key is missing; add it (see `pipeline schema`)"
    if kind == "union_tag_invalid":
        expected = ctx.get("expected_tags", "")
        tag = ctx.get("tag", value)
        return f"{path}.kind: unknown kind {tag!r}; use one of {expected}"
    if kind == "union_tag_not_found":
        return f"{path}: no 'kind' key; add kind: one of the kinds listed by `pipeline schema`"
    msg = _message(kind, error.get("msg", ""), ctx)
    if path == "(top level)" and kind == "value_error":
        return msg  # cross-key checks name their keys themselves
    fix = _fix(kind, ctx, field_at(model, loc))
    if kind in ("int_parsing", "float_parsing") and isinstance(value, str) and _FLOAT.match(value.strip()):
        number = _number(value)  # YAML 1.1 (PyYAML) reads 1e3 as text: say what to write instead
        fix = f"write it as {number!r} (YAML reads {value} as text; `--set` takes it as a number)"
    shown = "" if isinstance(value, dict) or kind == "too_short" else f" (got {value!r})"
    return f"{path}: {msg}{shown}" + (f"; {fix}" if fix and fix not in msg else "")


def validate_spec(data: Any, source: str | None = None) -> Job:
    """Validate raw job data (a dict) into a job model of its kind or raise ``SpecError``."""
    if not isinstance(data, dict):
        raise SpecError([f"(top level): a job file must be a YAML mapping, got {type(data).__name__}"], source)
    version = data.get("schema_version")
    if version is not None and version != SCHEMA_VERSION:
        raise SpecError(
            [f"schema_version: this pipeline reads version {SCHEMA_VERSION}, got {version!r}; set schema_version: 1"],
            source,
        )
    model = kinds.kind_named(data.get("kind")).model
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError([_describe(e, model) for e in _relevant(err.errors(), model)], source) from None


def _relevant(errors: list[ErrorDetails], model: type[BaseModel]) -> list[ErrorDetails]:
    """Errors without those of union members the value plainly is not.

    ``{low: 0.1, high: 1, num: 0}`` under ``list[float] | Axis`` fails both
    members; "Input should be a valid list" says nothing useful about a
    mapping, so only the ``Axis`` error (``num``) is kept: an error of a
    member that is not a model, for a mapping, when the same union has other
    errors.
    """
    kept = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        steps = _steps(model, loc)
        at_member = bool(steps) and steps[-1].member and not (steps[-1].node and _is_model(steps[-1].node[0]))
        if at_member and isinstance(error.get("input"), dict):
            if any(e is not error and tuple(e.get("loc", ()))[: len(loc) - 1] == loc[:-1] for e in errors):
                continue  # a mapping was meant as the model member of the union
        kept.append(error)
    return kept


def job_models() -> dict[str, type[Job]]:
    """Job kinds and their models (``pipeline.kinds``)."""
    return kinds.job_models()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a job file, turning file and YAML errors (a key given twice too) into ``SpecError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"job file {str(path)!r} does not exist; check the path"]) from None
    except OSError as err:
        raise SpecError([f"job file {str(path)!r} cannot be read: {err}"]) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:  # a key given twice too
        raise SpecError([describe_yaml_error(err, str(path))], str(path)) from None
    return data if data is not None else {}


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    """Load, override and validate a job file; relative file paths become absolute.

    Relative paths (store, input files, checkpoints, ``function.python_path``)
    are relative to the current directory, where the user runs ``pipeline``;
    ``function.python_path`` defaults to the job file's directory, so a module
    beside the job file imports.
    """
    path = Path(path)
    raw = read_yaml(path)
    data = apply_overrides(raw, overrides) if overrides else raw
    spec = validate_spec(data, str(path))
    return _resolve_paths(spec, path.resolve().parent)


def _resolve_paths(spec: Job, job_dir: Path) -> Job:
    cwd = Path.cwd()
    update: dict[str, Any] = {"store": spec.store.model_copy(update={"path": absolute_path(spec.store.path, cwd)})}
    update.update(kinds.kind_of(spec).resolve_paths(spec, job_dir, lambda p: absolute_path(p, cwd)))
    return spec.model_copy(update=update)


def absolute_path(path: str, base: Path) -> str:
    """``path`` made absolute against ``base``; a URL (``s3://``, ``memory://``) as given, ``file://`` its local path."""
    from ..storage import is_url, local_path

    if is_url(path):
        path = local_path(path)
        if is_url(path):
            return path
    q = Path(path).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def json_schema() -> dict[str, Any]:
    """JSON schema of every job kind (what `pipeline schema` prints).

    One self-contained document: the top level is a ``oneOf`` with one branch
    per job kind, and every ``$ref`` points into the root's ``$defs`` (pydantic
    generates the definitions of all kinds together, so names shared by several
    kinds are one definition and clashing names are made unique).

    Example:
        >>> schema = json_schema()
        >>> [branch["title"] for branch in schema["oneOf"]]
        ['DerivativeJob', 'SweepJob']
    """
    from pydantic.json_schema import models_json_schema

    models = list(kinds.job_models().values())
    refs, shared = models_json_schema([(m, "validation") for m in models])
    defs = shared.get("$defs", {})
    branches = []
    for model in models:
        name = refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        branches.append(defs.pop(name))  # job models are never referenced by others: inline them
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pipeline job file",
        "description": "A job file of `pipeline submit`: one of the job kinds below, chosen by its 'kind' key.",
        "oneOf": branches,
        "$defs": defs,
    }


# ---------------------------------------------------------------- hash and diff


def results_view(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved spec (of any kind) that determines the results: its kind's ``results_view``.

    Left out: the job ``name``, the execution settings, the store's path,
    codec and overwrite flag, ``derivatives.chunk_size`` (samples per batched
    call), axis labels and a sweep solver's performance-only options
    (``Solver.performance_options``). A store made by a spec with the same view
    can be resumed.
    """
    kind = kinds.KINDS.get(data.get("kind") or kinds.DEFAULT_KIND)
    return (kind.model if kind is not None else Job).results_view(data)


def results_hash(data: dict[str, Any]) -> str:
    """Hash of a resolved spec without the keys that do not change results (see ``results_view``).

    The same as the job's ``spec_hash()``; a store made by a spec with the
    same hash can be resumed.
    """
    return hash_view(results_view(data))


_ABSENT = object()


def spec_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> list[str]:
    """Lines ``key.path: old -> new`` for the result-determining keys that differ between two resolved specs.

    Example:
        >>> spec_differences({"derivatives": {"dtype": "float32"}}, {"derivatives": {"dtype": "float64"}})
        ['derivatives.dtype: float32 -> float64']
    """
    lines: list[str] = []

    def show(value) -> str:
        if value is _ABSENT:
            return "(not set)"
        return value if isinstance(value, str) else json.dumps(value)

    def walk(a, b, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                walk(a.get(name, _ABSENT), b.get(name, _ABSENT), f"{key}.{name}" if key else name)
        elif a != b:
            lines.append(f"{key or '(top level)'}: {show(a)} -> {show(b)}")

    walk(results_view(old), results_view(new), "")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines
