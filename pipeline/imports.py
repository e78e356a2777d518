"""Objects named by import path, ``package.module:attr``: one resolver for functions, solvers and fingerprints.

Stdlib only. ``import_object`` adds a job's ``python_path`` entries to
``sys.path`` (once, in front), imports the module and walks the dotted
attributes; when that fails it raises ``ImportPathError`` saying which step
failed, and the caller words the message for its job-file key
(``function.target``, ``solver.name``).

Example:
    >>> import_object("os.path:join") is __import__("os").path.join
    True
    >>> import_object("os.path:no_such_name")
    Traceback (most recent call last):
    ...
    pipeline.imports.ImportPathError: 'os.path' has no attribute 'no_such_name'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Literal


class ImportPathError(Exception):
    """``import_object`` could not resolve a path: why (``reason``), and what it got to.

    ``reason`` is ``"import"`` (the module cannot be found: ``cause`` is the
    ``ImportError``), ``"broken"`` (importing the module raised: ``cause`` is
    that error) or ``"attribute"`` (``owner`` has no attribute ``missing``).
    """

    def __init__(
        self,
        reason: Literal["import", "broken", "attribute"],
        module: str,
        attribute: str,
        *,
        cause: BaseException | None = None,
        owner: object = None,
        missing: str = "",
    ) -> None:
        self.reason = reason
        self.module = module
        self.attribute = attribute
        self.cause = cause
        self.owner = owner
        self.missing = missing
        if reason == "attribute":
            text = f"{module!r} has no attribute {attribute!r}"
        elif reason == "broken":
            text = f"importing module {module!r} failed: {describe_import_error(cause or self)}"
        else:
            text = f"cannot import module {module!r} ({cause})"
        super().__init__(text)

    def public_names(self) -> list[str]:
        """The public names of the object that lacks the attribute, sorted (what the user may have meant)."""
        return sorted(name for name in dir(self.owner) if not name.startswith("_"))


def add_python_path(entries: Iterable[str]) -> None:
    """Put each directory of ``entries`` in front of ``sys.path`` unless it is there already."""
    for entry in entries:
        if entry not in sys.path:
            sys.path.insert(0, entry)


def import_module(name: str, python_path: Iterable[str] = ()) -> ModuleType:
    """``importlib.import_module(name)`` after ``add_python_path(python_path)``; raises what the import raises."""
    add_python_path(python_path)
    return importlib.import_module(name)


def import_object(path: str, python_path: Iterable[str] = ()) -> object:
    """The object at ``package.module:attr`` (dotted attributes allowed), searching ``python_path`` first.

    Raises ``ImportPathError`` when the module cannot be imported, raises on
    import, or lacks an attribute.
    """
    module_name, _, attr_path = path.partition(":")
    try:
        obj: object = import_module(module_name, python_path)
    except ImportError as err:
        raise ImportPathError("import", module_name, attr_path, cause=err) from None
    except Exception as err:  # the module itself is broken: SyntaxError, NameError, ... at import time
        raise ImportPathError("broken", module_name, attr_path, cause=err) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ImportPathError("attribute", module_name, attr_path, owner=obj, missing=part)
        obj = getattr(obj, part)
    return obj


def module_file(name: str, python_path: Iterable[str] = ()) -> str | None:
    """The source file of module ``name`` (imported when it is not yet), or None when it cannot be imported."""
    module = sys.modules.get(name)
    if module is None:
        try:
            module = import_module(name, python_path)
        except Exception:  # the job's prepare reports import errors with their key
            return None
    return getattr(module, "__file__", None)


def describe_import_error(err: BaseException) -> str:
    """``SyntaxError: invalid syntax (fns.py, line 3)``: the error of a broken module, in one line."""
    if isinstance(err, SyntaxError):
        where = f" ({err.filename}, line {err.lineno})" if err.filename else ""
        return f"{type(err).__name__}: {err.msg}{where}"
    return f"{type(err).__name__}: {err}".splitlines()[0]
