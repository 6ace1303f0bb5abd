"""Plugin registries: methods and datasets by name, with declared hyper-parameters.

A plugin is a class with class attributes ``name``, ``description`` and ``params`` (a tuple
of :class:`Param`), registered with ``@METHODS.register`` or ``@DATASETS.register``.
A parameter may declare a search space (:class:`Space`, ``Param(..., tune=Space(...))``):
the method's search space for ``qbench tune`` is its parameters that have one
(:func:`space_of`).
Plugins are found in two places, loaded on first use:

1. every public module (a name not starting with ``_``) of the package ``qbench.methods``
   / ``qbench.datasets`` (the repository's ``methods/`` and ``datasets/`` folders) --
   adding a method is adding one file;
2. entry points in the groups ``qbench.methods`` / ``qbench.datasets`` of installed packages.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from qbench.core.errors import QbenchError, choice_error, one_line

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Space:
    """The search space of one parameter for ``qbench tune``: a range or a set of choices.

    - ``Space(low, high)``: uniform on ``low``..``high`` (both included); ``log=True``:
      log-uniform (``low`` > 0). An int parameter draws integers.
    - ``Space(choices=(...))``: one of the choices.
    - ``shared=True``: a stage-1 training knob (learning rate, weight decay) that every
      method shares through one cached stage-1 encoder. It is tuned once per dataset on the
      ``float`` method (``qbench tune --shared``), never in a method's own space.
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    shared: bool = False

    def __post_init__(self) -> None:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a Space has either choices or low..high, not both")
            if len(self.choices) < 2:
                raise ValueError(f"a Space needs at least two choices, got {self.choices!r}")
            return
        if self.low is None or self.high is None:
            raise ValueError("a Space needs low and high, or choices")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"a Space needs finite low < high, got {self.low!r}..{self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log Space needs low > 0, got {self.low!r}")

    def describe(self) -> str:
        """One line for ``qbench list --params``: ``log 0.001..3``, ``0..1`` or ``{l2, l1}``."""
        if self.choices is not None:
            text = "{" + ", ".join(str(c) for c in self.choices) + "}"
        else:
            text = ("log " if self.log else "") + f"{self.low:g}..{self.high:g}"
        return text + (" (shared stage-1 knob)" if self.shared else "")

    def as_dict(self) -> dict:
        """The space as JSON data (recorded in a study and its summary file)."""
        if self.choices is not None:
            return {"choices": list(self.choices), "shared": self.shared}
        return {"low": self.low, "high": self.high, "log": self.log, "shared": self.shared}


@dataclass(frozen=True)
class Param:
    """A declared hyper-parameter: name, type (int, float, str or bool), default, help,
    optionally the allowed ``choices`` or the allowed range ``minimum``..``maximum``, and
    optionally its search space ``tune`` (checked against the type, range and choices when
    the parameter is declared: a space outside what the parameter allows is a ValueError).
    A float parameter must be finite (NaN and infinity pass no range check) unless it is
    declared with ``finite=False``.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    tune: Space | None = None
    finite: bool = True

    def __post_init__(self) -> None:
        if self.tune is not None:
            self._check_space(self.tune)

    def _check_space(self, space: Space) -> None:
        where = f"parameter {self.name}: search space {space.describe()}"
        if space.choices is not None:
            for choice in space.choices:
                try:
                    self.parse(choice)
                except QbenchError as exc:
                    raise ValueError(f"{where}: choice {choice!r} is not allowed ({exc})") from None
            return
        if self.type not in (int, float) or self.choices is not None:
            raise ValueError(f"{where}: a range needs an int or float parameter without "
                             f"choices; give Space(choices=...)")
        if self.type is int and not (float(space.low).is_integer()
                                     and float(space.high).is_integer()):
            raise ValueError(f"{where}: an int parameter needs integer bounds")
        lo = -math.inf if self.minimum is None else self.minimum
        hi = math.inf if self.maximum is None else self.maximum
        if space.low < lo or space.high > hi:
            raise ValueError(f"{where} lies outside the allowed range {lo:g}..{hi:g}")

    def _range(self) -> str:
        lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
        hi = "inf" if self.maximum is None else f"{self.maximum:g}"
        return f"[{lo}, {hi}]"

    def parse(self, value: Any, owner: str = "") -> Any:
        """Convert a value (often the text after ``-p key=``) to this parameter's type."""
        where = f" of {owner}" if owner else ""
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out = value
                elif str(value).lower() in _TRUE:
                    out = True
                elif str(value).lower() in _FALSE:
                    out = False
                else:
                    raise ValueError
            elif self.type is int and isinstance(value, str):
                out = int(value, 10)
            elif self.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            else:
                out = self.type(value)
        except (TypeError, ValueError, OverflowError):
            raise QbenchError(
                f"parameter {self.name}{where}: {value!r} is not a valid {self.type.__name__}"
            ) from None
        if self.type is float and self.finite and not math.isfinite(out):
            raise QbenchError(f"parameter {self.name}{where}: {out!r} is not allowed; allowed: "
                              f"a finite number in {self._range()}")
        if self.minimum is not None and out < self.minimum:
            raise QbenchError(
                f"parameter {self.name}{where}: {out!r} is below the minimum {self.minimum!r}"
            )
        if self.maximum is not None and out > self.maximum:
            raise QbenchError(
                f"parameter {self.name}{where}: {out!r} is above the maximum {self.maximum!r}"
            )
        if self.choices is not None and out not in self.choices:
            raise QbenchError(
                f"parameter {self.name}{where}: {out!r} is not allowed; allowed: "
                + ", ".join(str(c) for c in self.choices)
            )
        return out


class Registry:
    """Plugins of one kind ("method" or "dataset") by name."""

    def __init__(self, kind: str, package: str, group: str):
        self.kind = kind
        self.package = package
        self.group = group
        self._plugins: dict[str, type] = {}
        self._loaded = False

    def register(self, cls: type) -> type:
        """Class decorator: register ``cls`` under ``cls.name``."""
        for attr in ("name", "description", "params"):
            if not hasattr(cls, attr):
                raise TypeError(f"{self.kind} plugin {cls.__name__} lacks attribute {attr!r}")
        names = [p.name for p in cls.params]
        if len(names) != len(set(names)):
            raise TypeError(f"{self.kind} plugin {cls.name} declares a parameter twice")
        existing = self._plugins.get(cls.name)
        if existing is not None and existing is not cls:
            raise TypeError(f"two {self.kind} plugins named {cls.name!r}")
        self._plugins[cls.name] = cls
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 -- a broken plugin is the user's input
                raise QbenchError(f"{self.kind} plugin entry point {ep.name!r} ({ep.value}) "
                                  f"failed to load: {one_line(exc)}") from None
            if isinstance(obj, type) and obj.name not in self._plugins:
                self.register(obj)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._plugins)

    def get(self, name: str) -> type:
        self._load()
        if name not in self._plugins:
            raise choice_error(self.kind, name, self._plugins)
        return self._plugins[name]

    def items(self) -> list[tuple[str, type]]:
        self._load()
        return sorted(self._plugins.items())

    def resolve_params(self, name: str, overrides: dict[str, Any] | None = None) -> dict:
        """All declared parameters of plugin ``name``: defaults updated by ``overrides``.

        Unknown keys and values of the wrong type raise :class:`QbenchError`.
        """
        cls = self.get(name)
        declared = {p.name: p for p in cls.params}
        out = {p.name: p.default for p in cls.params}
        for key, value in (overrides or {}).items():
            if key not in declared:
                allowed = ", ".join(sorted(declared)) or "(none)"
                raise QbenchError(
                    f"unknown parameter {key!r} for {self.kind} {name}; allowed: {allowed}"
                )
            out[key] = declared[key].parse(value, owner=f"{self.kind} {name}")
        return out


def space_of(cls: type, *, shared: bool = False) -> dict[str, Param]:
    """The search space of plugin class ``cls``: its parameters with a ``tune`` space.

    ``shared=False``: the method's own knobs (the space ``qbench tune`` searches per method);
    ``shared=True``: the stage-1 training knobs every method shares, tuned once per dataset
    on the ``float`` method. Name -> :class:`Param`, in declaration order.
    """
    return {p.name: p for p in cls.params if p.tune is not None and p.tune.shared == shared}


METHODS = Registry("method", "qbench.methods", "qbench.methods")
DATASETS = Registry("dataset", "qbench.datasets", "qbench.datasets")


def parse_key_values(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Turn ``["a=1", "b=x"]`` into ``{"a": "1", "b": "x"}``; malformed items raise."""
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QbenchError(f"-p expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out
