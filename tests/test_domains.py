"""normexp.config.domains, property-based: for every key of every config group, values drawn outside its
declared domain (negative, zero, the open end, too large, nan, inf, a wrong type, an unknown choice) are
refused in one line naming the key and the value, while composing and before anything runs; values
drawn inside it compose and pass. A sample runs as real commands: exit status 1, one line on stderr, no
traceback, no store created."""

import math
import subprocess
import sys
from dataclasses import dataclass, fields
from typing import Any

import pytest
from hydra.errors import ConfigCompositionException
from hypothesis import HealthCheck, example, given, settings, strategies as st
from omegaconf import OmegaConf

from normexp.config import domains, schema
from normexp.config.domains import Interval, NonEmpty, OneOf
from normexp.errors import ConfigError
from normexp.tracking import commands
from normexp.training import classifier
from tests.conftest import compose

BAD_PER_KEY = 1    # drawn by Hypothesis for each key, beside its edge cases (@example)
GOOD_PER_KEY = 1
# The same draws every run (so the count is stable), nothing stored between runs, no time limit per case.
QUIET_HYPOTHESIS = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
# Words Hydra's override grammar reads as something other than a string.
NOT_STRINGS = {"true", "false", "null", "nan", "inf", "none", "yes", "no", "on", "off"}
# One option per schema of each group: every key of every group is reached.
OPTIONS = {"dataset": ["digits", "mnist"], "model": ["mlp", "cnn", "cnn_modern", "seq"],
           "norm": ["none", "bn", "bn_scratch", "ln", "ln_scratch", "gn"], "optim": ["adam", "sgd"]}
NODES = ["trainer", "tracking", "divergence", "probes", "answers"]  # typed by the whole config's schema


@dataclass(frozen=True)
class Key:
    config_name: str            # train or search
    option: tuple[str, ...]     # the group option that has the key, e.g. ("norm=gn",)
    key: str                    # e.g. norm.num_groups
    allowed: Any                # its domain, or None (a typed field without one: only wrong types are bad)
    kind: Any                   # the field's type


def holds(kind, wanted) -> bool:
    return kind is wanted or any(holds(arg, wanted) for arg in getattr(kind, "__args__", ()))


def keys() -> list[Key]:
    found, seen = [], set()
    for group, options in OPTIONS.items():
        for option in options:
            schema_type = OmegaConf.get_type(compose("train", f"{group}={option}")[group])
            for key in _fields(schema_type, group):
                if key[0] not in seen:
                    seen.add(key[0])
                    found.append(Key("train", (f"{group}={option}",), *key))
    for node in NODES:
        found += [Key("train", (), *key) for key in _fields(OmegaConf.get_type(compose("train")[node]), node)]
    found += [Key("search", (), *key) for key in _fields(schema.SearchConfig, "search")]
    found.append(Key("train", (), "seed", *_domain_of(schema.TrainConfig, "seed")))
    return found


def _fields(schema_type, prefix: str):
    for f in fields(schema_type):
        if "domain" not in f.metadata and (holds(f.type, str) or f.type is Any):
            continue  # any string is a value (a path, a name); `Any`: a node of its own (search.pruner)
        yield f"{prefix}.{f.name}", *_domain_of(schema_type, f.name)


def _domain_of(schema_type, name: str):
    f = next(f for f in fields(schema_type) if f.name == name)
    return f.metadata.get("domain"), f.type


KEYS = keys()


def is_list(kind) -> bool:
    return "list" in str(kind)


def text(value) -> str:
    """The override's right-hand side for a Python value."""
    if isinstance(value, list):
        return "[" + ",".join(text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and not value.strip():
        return f"'{value}'"
    return domains.show(value)


def bad_values(k: Key):
    """Values outside k's domain or of a wrong type, drawn at random."""
    integer = holds(k.kind, int)
    wrong = st.sampled_from(wrong_types(k)) if wrong_types(k) else st.nothing()
    if integer:
        wrong = wrong | st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not float(x).is_integer())
    drawn = [wrong]
    a = k.allowed
    if isinstance(a, Interval):
        number = st.integers if integer else lambda **bounds: st.floats(allow_nan=False, allow_infinity=False,
                                                                         width=64, **bounds)
        if math.isfinite(a.low):
            low = int(a.low) - (0 if a.low_open else 1) if integer else a.low
            drawn.append(number(max_value=low, min_value=low - 10**9) if integer
                         else number(max_value=low, exclude_max=not a.low_open, min_value=-1e300))
        if math.isfinite(a.high):
            high = int(a.high) + (0 if a.high_open else 1) if integer else a.high
            drawn.append(number(min_value=high, max_value=high + 10**12) if integer
                         else number(min_value=high, exclude_min=not a.high_open, max_value=1e300))
        if not integer:
            drawn.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif isinstance(a, OneOf):
        drawn.append(st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(
            lambda s: s not in NOT_STRINGS and s not in a.options()))
    elif isinstance(a, NonEmpty):
        drawn.append(st.sampled_from(["", "   "]))
    values = st.one_of(drawn)
    if is_list(k.kind) and a is not None:  # one bad element among good ones; a plain wrong type stays a scalar
        good = good_values(k, element=True)
        values = st.one_of(wrong, st.tuples(st.lists(good, max_size=2), st.one_of(drawn[1:])).map(
            lambda pair: [*pair[0], pair[1]]))
    return values


def edge_cases(k: Key) -> list:
    """The bad values each key is tried with first: each open end, one step past each end, nan, inf,
    an unknown choice, an empty string."""
    integer, a, cases = holds(k.kind, int), k.allowed, wrong_types(k)[:1]
    if isinstance(a, Interval):
        for end, is_open, step in ((a.low, a.low_open, -1), (a.high, a.high_open, 1)):
            if math.isfinite(end):
                cases += [int(end)] if is_open and integer else [float(end)] if is_open else []
                cases.append(int(end) + step if integer else float(end) + step)
        cases += [] if integer else [math.nan, math.inf, -math.inf]
    elif isinstance(a, OneOf):
        cases.append("no_such_choice")
    elif isinstance(a, NonEmpty):
        cases.append("")
    if is_list(k.kind) and a is not None:
        cases = cases[:1] + [[c] for c in cases[1:]]
    return cases


def wrong_types(k: Key) -> list:
    """Values of a type the field does not hold (OmegaConf reads 2 as true, and anything as a string)."""
    if holds(k.kind, bool):
        return ["maybe", [1, 2]]
    if holds(k.kind, str):
        return []
    return ["abc"] if is_list(k.kind) else ["abc", [1, 2]]


def good_values(k: Key, element: bool = False):
    a = k.allowed
    if isinstance(a, Interval):
        if holds(k.kind, int):
            high = int(a.high) if math.isfinite(a.high) else int(a.low) + 10**6
            values = st.integers(min_value=int(a.low) + (1 if a.low_open else 0), max_value=min(high, int(a.low) + 10**6))
        else:
            values = st.floats(min_value=max(a.low, -1e300), max_value=min(a.high, 1e300), exclude_min=a.low_open,
                               exclude_max=a.high_open, allow_nan=False, allow_infinity=False)
    elif isinstance(a, OneOf):
        values = st.sampled_from(a.options())
    elif isinstance(a, NonEmpty):
        values = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(lambda s: s not in NOT_STRINGS)
    else:
        values = st.booleans()
    if is_list(k.kind) and not element:
        return st.lists(values, min_size=1, max_size=3)
    return values


def compose_with(k: Key, value):
    return compose(k.config_name, *k.option, f"{k.key}={text(value)}")


def refusal(k: Key, value) -> str:
    """The one line the command would end with for k=value; fails when composing and checking accept it."""
    try:
        schema.check(compose_with(k, value))
    except (ConfigCompositionException, ConfigError) as error:
        return commands.one_line(error)
    pytest.fail(f"{k.key}={text(value)} was accepted")


def test_every_key_refuses_values_outside_its_domain_in_one_line_naming_them():
    tried = set()  # (key, the value as typed): Hypothesis's draw is often an edge case again, composed only once

    def refused(k: Key):
        def check(value):
            typed = (k.key, text(value))
            if typed in tried:
                return
            line = refusal(k, value)
            tried.add(typed)
            assert "\n" not in line and f"{k.key}={domains.show(value)}" in line, (k.key, value, line)

        return check

    for k in KEYS:
        test = given(value=bad_values(k))(refused(k))
        for value in edge_cases(k):
            test = example(value=value)(test)
        settings(max_examples=BAD_PER_KEY, **QUIET_HYPOTHESIS)(test)()
    # docs/reliability.md states this count (Hypothesis draws the same values every run: derandomize).
    print(f"\n{len(tried)} distinct bad inputs over {len(KEYS)} keys, each refused in one line")
    assert {key for key, _ in tried} == {k.key for k in KEYS}  # every key, several values each


def test_every_key_accepts_values_inside_its_domain():
    def accepted(k: Key):
        def check(value):
            domains.refuse_out_of_domain(compose_with(k, value))  # relations may refuse a combination (test_relations)

        return check

    for k in KEYS:
        if k.allowed is not None:
            settings(max_examples=GOOD_PER_KEY, **QUIET_HYPOTHESIS)(given(value=good_values(k))(accepted(k)))()


def test_the_schema_names_the_optimizers_the_classifier_has():
    assert set(schema.OPTIMIZERS) == set(classifier.OPTIMIZERS)


@pytest.mark.parametrize("module, override", [("train", "optim.lr=nan"), ("search", "search.workers=0")])
def test_a_bad_value_on_the_real_command_line_is_one_line_and_creates_no_store(tmp_path, module, override):
    done = subprocess.run([sys.executable, "-m", f"normexp.{module}", override,
                           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"search.storage=sqlite:///{tmp_path}/optuna.db"
                           if module == "search" else "seed=0", f"hydra.run.dir={tmp_path}/out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {override} must be ")  # no traceback: the one line is all of stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()
