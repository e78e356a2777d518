"""YAML of job files and ``--set`` values: a key given twice is an error, and every error is one line.

PyYAML keeps the last of two equal keys without a word, so ``n: 2000`` then
``n: 3000`` in one mapping would run 3000 samples; ``load_yaml`` refuses it,
naming the key path and both lines. ``describe_yaml_error`` says a syntax
error in one line (where, what, the fix) instead of PyYAML's several lines
about ``"<unicode string>"``.

Example:
    >>> load_yaml("inputs: {kind: uniform, n: 2}")
    {'inputs': {'kind': 'uniform', 'n': 2}}
    >>> try:
    ...     load_yaml("inputs:\\n  n: 2000\\n  n: 3000\\n")
    ... except DuplicateKeyError as err:
    ...     print(describe_yaml_error(err, "job.yaml"))
    inputs.n: the key is given twice in job.yaml (lines 2 and 3) and YAML would silently keep the last; remove one of them
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice: ``path`` is the key's path (``['inputs', 'n']``), ``lines`` both lines."""

    def __init__(self, path: list[str], lines: tuple[int, int]) -> None:
        self.path, self.lines = path, lines
        super().__init__(f"{dotted(path)}: the key is given twice (lines {lines[0]} and {lines[1]})")


def dotted(path: list[str]) -> str:
    """``['inputs', 'axes', '[0]', 'num']`` -> ``inputs.axes[0].num``, as the spec's error messages write key paths."""
    return ".".join(path).replace(".[", "[")


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping (merge keys ``<<`` may still be overridden)."""

    _root: Node | None = None

    def get_single_data(self) -> Any:
        self._root = self.get_single_node()  # kept: a duplicate's key path is looked up from the root
        return self.construct_document(self._root) if self._root is not None else None

    def flatten_mapping(self, node: MappingNode) -> None:
        # checked at a mapping's first flattening, which alone changes its key list: the keys as written,
        # before merge keys (``<<``) add theirs (a merge of it elsewhere may flatten it before it is built)
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            self._check_duplicates(node)
        super().flatten_mapping(node)

    def _check_duplicates(self, node: MappingNode) -> None:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not key_node:
                name = key_node.value if isinstance(key_node, ScalarNode) else key  # as written in the file
                path = [*_path_to(self._root, node), str(name)]
                raise DuplicateKeyError(path, (first.start_mark.line + 1, key_node.start_mark.line + 1))


def _path_to(root: Node | None, target: Node) -> list[str]:
    """The key path from ``root`` to the mapping node ``target`` (``[]`` for the root itself)."""
    stack: list[tuple[Node, list[str]]] = [(root, [])] if root is not None else []
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in visited:  # an alias seen before
            continue
        visited.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, ScalarNode) else "?"
                stack.append((value_node, [*path, str(name)]))
        elif isinstance(node, SequenceNode):
            stack.extend((item, [*path, f"[{i}]"]) for i, item in enumerate(node.value))
    return []


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises ``DuplicateKeyError`` for a key given twice in one mapping."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe


def describe_yaml_error(err: yaml.YAMLError, source: str | None = None) -> str:
    """One line for a YAML error of ``source`` (a job file; ``None``: a ``--set`` value): where, what, the fix.

    Example:
        >>> try:
        ...     load_yaml("inputs: {kind: uniform\\n  n: 3}")
        ... except yaml.YAMLError as err:
        ...     print(describe_yaml_error(err, "job.yaml"))
        job.yaml, line 2, column 4: not valid YAML: expected ',' or '}', but got ':' (in a flow mapping at line 1, column 9); fix the syntax there
    """
    where = f" in {source}" if source else ""
    if isinstance(err, DuplicateKeyError):
        lines = f" ({_lines(err.lines)})" if source else ""
        return (
            f"{dotted(err.path)}: the key is given twice{where}{lines} and YAML would silently keep the last; "
            "remove one of them"
        )
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context = context.replace("while parsing ", "in ").replace("while scanning ", "in ")
        problem += f" ({context} at {_position(context_mark)})"
    if source is None:  # a --set value
        at = f" at {_position(mark)}" if mark is not None else ""
        return f"the value is not valid YAML{at}: {problem}; fix the syntax there"
    at = f", {_position(mark)}" if mark is not None else ""
    return f"{source}{at}: not valid YAML: {problem}; fix the syntax there"


def _lines(lines: tuple[int, int]) -> str:
    return f"lines {lines[0]} and {lines[1]}" if lines[0] != lines[1] else f"both on line {lines[0]}"


def _position(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"
