"""Checks of solver option values shared by the built-in solvers (a leaf module, stdlib only).

Example:
    >>> is_int(3), is_int(True), is_positive(0.5), is_positive(float("inf"))
    (True, False, True, False)
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_positive(value: Any) -> bool:
    """A finite real number > 0 (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and float(value) > 0
