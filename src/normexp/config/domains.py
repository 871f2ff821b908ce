"""The domain of a config value: what it may be, declared once, on its schema's field (normexp.config.schema),
and checked as soon as Hydra has composed the config, before data, model or store exist.

A field declares `x: float = domain(Interval(low=0, low_open=True), "0.001")`: the allowed values and an
example for the error's fix. In a list (model.widths, optim.betas) each element must be in the domain.
Domains whose bounds depend on other values (GroupNorm's groups and the widths, lr_min < lr_max) are
normexp.config.relations; bounds that depend on the data (train_size, min_length) stay with the data.
"""

import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from normexp.errors import ConfigError


def show(value) -> str:
    """A value as the command line writes it: true, null, 0.001, [0.9, 0.999]."""
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "''"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value)) if abs(value) >= 1e6 else str(value)
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ", ".join(map(show, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)  # repr: the shortest text that reads back


@dataclass(frozen=True)
class Interval:
    """A finite number from `low` to `high`; an open end is itself outside."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def allows(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False  # nan and inf included: no value here means "unbounded"
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a finite number"
        if math.isfinite(self.low) and math.isfinite(self.high):
            return (f"{kind} in {'(' if self.low_open else '['}{show(self.low)}, "
                    f"{show(self.high)}{')' if self.high_open else ']'}")
        if math.isfinite(self.low):
            return f"{kind} {'>' if self.low_open else '>='} {show(self.low)}"
        if math.isfinite(self.high):
            return f"{kind} {'<' if self.high_open else '<='} {show(self.high)}"
        return kind


@dataclass(frozen=True)
class OneOf:
    """One of `choices`; a function gives them where they are known only when checked (Lightning's
    accelerators). A value matches a choice of its own type only (1 is not true)."""
    choices: tuple | Callable[[], tuple]

    def options(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def allows(self, value) -> bool:
        return any(type(value) is type(choice) and value == choice for choice in self.options())

    def describe(self, integer: bool) -> str:
        return "one of " + ", ".join(map(show, self.options()))


@dataclass(frozen=True)
class NonEmpty:
    """A string with at least one character other than whitespace."""

    def allows(self, value) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def describe(self, integer: bool) -> str:
        return "a non-empty string"


# The domains most fields share.
FINITE = Interval()
POSITIVE = Interval(low=0, low_open=True)
NON_NEGATIVE = Interval(low=0)
COUNT = Interval(low=1)                                        # with an int field: an integer >= 1
FRACTION = Interval(low=0, high=1, low_open=True)              # (0, 1]
OPEN_FRACTION = Interval(low=0, high=1, low_open=True, high_open=True)
PROBABILITY = Interval(low=0, high=1)
RATIO = Interval(low=1, low_open=True)                         # a factor between two values, > 1


def domain(allowed, example: str, default: Any = MISSING) -> Any:
    """A schema field whose value must be in `allowed` (or null, where the field is Optional);
    `example` is an allowed value, the fix the error names."""
    return field(default=default, metadata={"domain": allowed, "example": example})


def declared(schema) -> dict[str, tuple[Any, str, bool]]:
    """{field: (domain, example, integer)} of a schema dataclass; integer: the field holds ints."""
    found = {}
    for f in fields(schema) if is_dataclass(schema) else ():
        if "domain" in f.metadata:
            found[f.name] = (f.metadata["domain"], f.metadata["example"], _holds_int(f.type))
    return found


def _holds_int(kind) -> bool:
    return kind is int or any(_holds_int(arg) for arg in typing.get_args(kind))


def refuse_out_of_domain(cfg: DictConfig, prefix: str = "") -> None:
    """Raise ConfigError for the first value of `cfg`, a node typed by a schema or holding such nodes,
    outside its field's domain."""
    domains = declared(OmegaConf.get_type(cfg))
    for key in cfg:
        if not prefix and key == "hydra":  # Hydra's own node (return_hydra_config): not ours, resolved by a run
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            refuse_out_of_domain(value, f"{prefix}{key}.")
        if key not in domains or value is None:
            continue
        allowed, example, integer = domains[key]
        values = list(value) if isinstance(value, ListConfig) else [value]
        if not all(allowed.allows(v) for v in values):
            each = "each be" if isinstance(value, ListConfig) else "be"
            raise ConfigError(f"{prefix}{key}={show(value)} must {each} {allowed.describe(integer)}; "
                              f"e.g. {prefix}{key}={example}")

