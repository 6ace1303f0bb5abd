"""The validation boundary's small checks, declared once (scikit-learn's ``check_scalar``
style): a value, its name as the user typed it, and what is allowed; a bad value is one
:class:`qbench.core.errors.QbenchError` line naming both.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

from qbench.core.errors import QbenchError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
"""A name that may become part of a file name (variants, studies, a result's dataset,
protocol and method): letters, digits and ``. _ + -``, not first; no path separator."""


def is_int(value: Any) -> bool:
    """A whole number that is not a bool (``True`` is an ``int`` to Python, not to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, low: int | None = None, allow_none: bool = False,
              what: str | None = None) -> Any:
    """``value`` when it is an integer >= ``low`` (or None where ``allow_none``); else a
    :class:`QbenchError` "``name`` must be ``what``, got ``value``" (``what`` defaults to
    "a positive integer" for ``low`` = 1, else "an integer >= ``low``")."""
    if value is None and allow_none:
        return value
    if not is_int(value) or (low is not None and value < low):
        if what is None:
            what = ("a positive integer" if low == 1 else
                    f"an integer >= {low}" if low is not None else "an integer")
            if allow_none:
                what += " or None"
        raise QbenchError(f"{name} must be {what}, got {value!r}")
    return value
