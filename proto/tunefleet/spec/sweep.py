"""Sweeps in the job spec: the `sweep:` block's YAML shorthand, its checks, its points.

A sweep file is a job file plus a `sweep:` block (JobSpec.sweep). The shorthand users write
(`optimizer.lr: loguniform(1e-5, 1e-2)`, `finetune.strategy: [head_only, full]`) is turned
into SweepParam messages here, before the generic parser sees it, so the proto stays the one
contract. Checking a sweep means checking every job it can create: each point of a grid and
the ends of each range are validated as a JobSpec by the one validator, so a bad lr range is
refused at submit with its path, not discovered by a trial that fails an hour later.

No torch and no optuna here: the SDK, `ftctl` and the coordinator all import this.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from tunefleet.limits import quote
from tunefleet.spec import choices as C
from tunefleet.spec.errors import FieldError
from tunefleet.v1 import spec_pb2

TYPES = ("choice", "uniform", "loguniform", "int")
RANGE_TYPES = ("uniform", "loguniform", "int")
ALGORITHMS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "asha")
MODES = ("max", "min")
MAX_GRID_POINTS = 10_000
# Fields one sweep may vary: enough for any real search, few enough that walking the space
# (one level per field) stays shallow.
MAX_PARAMS = 32
MAX_TRIALS = 1_000
MAX_CONCURRENT = 100
DEFAULT_MAX_TRIALS = 10
DEFAULT_MAX_CONCURRENT = 2
# Validating every point of a big space costs a validator run each; past this many, the
# choices are combined with the ranges' low ends, then each range's high end is tried alone.
_MAX_CHECKED_POINTS = 512
# Fields a sweep cannot draw: the trials' names are the sweep's, and a sweep has one block.
_NOT_SWEEPABLE = ("name", "sweep")

_NOT_NUMBERS = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}
_RANGE = re.compile(r"^\s*(uniform|loguniform|int)\s*\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)\s*$")


# ---- the YAML shorthand ------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A YAML scalar as the string SweepParam.values holds (None: not a scalar)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else str(value)
    return None


def normalize_block(block: Any, errors: list[FieldError]) -> Any:
    """The `sweep:` mapping with its shorthand spelt out as SweepParam fields; problems the
    generic parser could not name well are added to `errors` with their paths."""
    if not isinstance(block, dict) or not isinstance(block.get("space"), dict):
        return block  # the parser reports a wrong shape itself
    space = {}
    for key, value in block["space"].items():
        path = f"sweep.space.{key}"
        if isinstance(value, list):
            value = {"type": "choice", "values": value}
        elif isinstance(value, str):
            m = _RANGE.match(value)
            if m is None:
                errors.append(
                    FieldError(
                        path,
                        f"{quote(value)} is not a range; write uniform(a, b), loguniform(a, b) "
                        "or int(a, b), or a list of choices",
                    )
                )
                continue
            value = {"type": m.group(1), "low": m.group(2), "high": m.group(3)}
        elif isinstance(value, dict):
            value = dict(value)
            if "values" in value and "type" not in value:
                value["type"] = "choice"
        else:
            errors.append(
                FieldError(
                    path, "expected a list of choices, a range such as uniform(a, b), or a mapping"
                )
            )
            continue
        if isinstance(value.get("values"), list):
            field = field_at(key)[0] if isinstance(key, str) else None
            text_field = field is not None and field.type == FieldDescriptor.TYPE_STRING
            texts = []
            for i, v in enumerate(value["values"]):
                t = _text(v)
                if t is None:
                    errors.append(FieldError(f"{path}.values[{i}]", "expected a single value"))
                elif isinstance(v, bool) and text_field:  # as the base job's parser says it
                    errors.append(
                        FieldError(
                            f"{path}.values[{i}]",
                            f"expected a string, got {quote(v)}; quote it "
                            "(YAML reads no/yes/on/off as booleans)",
                        )
                    )
                else:
                    texts.append(t)
            value["values"] = texts
        if isinstance(value.get("when"), dict):
            value["when"] = {
                k: _text(v) if _text(v) is not None else v for k, v in value["when"].items()
            }
        space[key] = value
    return {**block, "space": space}


# ---- field paths ---------------------------------------------------------------------------


def _is_repeated(field: FieldDescriptor) -> bool:
    rep = getattr(field, "is_repeated", None)
    if rep is not None:
        return rep() if callable(rep) else bool(rep)
    return field.label == FieldDescriptor.LABEL_REPEATED


def field_at(path: str) -> tuple[FieldDescriptor | None, str]:
    """The scalar JobSpec field a dotted path names, or (None, why not)."""
    desc = spec_pb2.JobSpec.DESCRIPTOR
    parts = path.split(".")
    if parts[0] in _NOT_SWEEPABLE:
        return None, f"{parts[0]} cannot be swept"
    field = None
    for i, part in enumerate(parts):
        if desc is None:
            return None, f"{'.'.join(parts[:i])} is not a section; it has no field {part}"
        field = desc.fields_by_name.get(part)
        if field is None:
            allowed = ", ".join(f.name for f in desc.fields)
            where = ".".join(parts[:i]) or "the job"
            return None, f"{where} has no field {quote(part)}; expected one of: {allowed}"
        if _is_repeated(field):
            return (
                None,
                f"{'.'.join(parts[: i + 1])} is a list or mapping; sweep scalar fields only",
            )
        desc = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    if desc is not None:
        return (
            None,
            f"{path} is a section; name one of its fields (e.g. {path}.{desc.fields[0].name})",
        )
    return field, ""


def convert(field: FieldDescriptor, text: str) -> Any:
    """A choice's text as the field's type; raises ValueError."""
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return text
    if t == FieldDescriptor.TYPE_BOOL:
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(f"expected true or false, got {quote(text)}")
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {quote(text)}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {quote(text)}")
        return value
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {quote(text)}") from None
    if not value.is_integer():
        raise ValueError(f"expected an integer, got {quote(text)}")
    lo, hi = _INT_RANGES.get(t, (-(2**31), 2**31 - 1))
    if not lo <= value <= hi:
        raise ValueError(f"{quote(text)} is out of range for an integer field")
    return int(value)


def fmt(value: Any) -> str:
    """A drawn value as YAML would write it (Trial.params, `when` comparisons)."""
    t = _text(value)
    return t if t is not None else str(value)


def apply(spec: spec_pb2.JobSpec, params: dict[str, Any]) -> spec_pb2.JobSpec:
    """A copy of `spec` without its sweep block and with `params` (path -> value) set."""
    out = spec_pb2.JobSpec()
    out.CopyFrom(spec)
    out.ClearField("sweep")
    for path, value in params.items():
        *parents, last = path.split(".")
        msg = out
        for part in parents:
            msg = getattr(msg, part)
        field = msg.DESCRIPTOR.fields_by_name[last]
        if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            value = float(value)
        elif field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL):
            value = int(value)
        setattr(msg, last, value)
    return out


# ---- the space -------------------------------------------------------------------------


def choice_values(path: str, param: spec_pb2.SweepParam) -> list[Any]:
    """A choice parameter's values as its field's type (call after check())."""
    field, _ = field_at(path)
    return [convert(field, v) for v in param.values]


def order(space) -> list[str]:
    """The parameters, each after the ones its `when` names (then by path), so a condition
    is always decided before the parameter it guards. Assumes no cycles (check() refuses them)."""
    done: list[str] = []
    pending = sorted(space)
    while pending:
        ready = [p for p in pending if all(w in done or w not in space for w in space[p].when)]
        if not ready:  # a cycle: check() has reported it
            return done + pending
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def active(param: spec_pb2.SweepParam, chosen: dict[str, Any]) -> bool:
    """Whether `param`'s conditions hold for the values drawn so far."""
    return all(w in chosen and _same(w, chosen[w], v) for w, v in param.when.items())


def _same(path: str, value: Any, text: str) -> bool:
    """Whether a drawn value is the one a condition names: compared as the field's type, so
    `when: {optimizer.lr: 0.001}` holds for a choice written 1e-3 (YAML reads that, without a
    dot, as a string)."""
    if fmt(value) == text:
        return True
    field, _ = field_at(path)
    try:
        return field is not None and convert(field, text) == value
    except ValueError:
        return False


def _points(space, ends: bool) -> Iterator[dict[str, Any]]:
    """Every combination of the choices (and, with `ends`, of each range's two ends),
    honouring the conditions: a parameter whose `when` does not hold is left out."""
    names = order(space)

    def values(path):
        p = space[path]
        if p.type == "choice":
            return choice_values(path, p)
        if p.type == "int":
            return [int(p.low), int(p.high)] if ends else [int(p.low)]
        return [p.low, p.high] if ends else [p.low]

    def walk(i: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(names):
            yield dict(chosen)
            return
        path = names[i]
        if not active(space[path], chosen):
            yield from walk(i + 1, chosen)
            return
        for v in values(path):
            chosen[path] = v
            yield from walk(i + 1, chosen)
            del chosen[path]

    return walk(0, {})


def grid(sweep: spec_pb2.SweepSpec) -> list[dict[str, Any]]:
    """A grid sweep's points, in a fixed order (call after check())."""
    return list(itertools.islice(_points(sweep.space, False), MAX_GRID_POINTS + 1))


def check_points(sweep: spec_pb2.SweepSpec) -> list[dict[str, Any]]:
    """The points validated at submit: the whole grid, with each range's two ends."""
    points = list(itertools.islice(_points(sweep.space, True), _MAX_CHECKED_POINTS + 1))
    if len(points) <= _MAX_CHECKED_POINTS:
        return points
    low = list(itertools.islice(_points(sweep.space, False), _MAX_CHECKED_POINTS))
    highs = []
    for path, p in sweep.space.items():
        if p.type in RANGE_TYPES:
            for point in low:
                if path in point:
                    highs.append({**point, path: int(p.high) if p.type == "int" else p.high})
                    break
    return low + highs


# ---- checks ----------------------------------------------------------------------------


def check(
    spec: spec_pb2.JobSpec, validate: Callable[[spec_pb2.JobSpec], list[FieldError]]
) -> list[FieldError]:
    """Every problem of the sweep block, then of every job it can create (`validate` is the
    one validator); a problem of a swept field is reported at sweep.space.PATH."""
    s = spec.sweep
    errors: list[FieldError] = []

    def fail(path: str, message: str) -> None:
        errors.append(FieldError(path, message))

    if not s.space:
        fail(
            "sweep.space",
            "required: at least one field to sweep, e.g. optimizer.lr: loguniform(1e-5, 1e-2)",
        )
    if len(s.space) > MAX_PARAMS:
        return [FieldError("sweep.space", f"at most {MAX_PARAMS} fields, got {len(s.space)}")]
    fields: dict[str, FieldDescriptor] = {}
    for path in sorted(s.space):
        p, at = s.space[path], f"sweep.space.{path}"
        field, why = field_at(path)
        if field is None:
            fail(at, why)
            continue
        fields[path] = field
        if p.type not in TYPES:
            fail(
                f"{at}.type",
                f"{quote(p.type)} is not allowed; {C.one_of(TYPES)}"
                if p.type
                else f"required; {C.one_of(TYPES)}",
            )
            continue
        if p.type == "choice":
            _check_choice(fail, at, field, p)
        else:
            _check_range(fail, at, field, p)
    for path in sorted(s.space):
        for other, value in sorted(s.space[path].when.items()):
            at = f"sweep.space.{path}.when.{other}"
            q = s.space.get(other)
            if q is None or q.type != "choice":
                fail(at, "a condition names another choice parameter of sweep.space")
                continue
            if other in fields and not any(
                _same(other, convert(fields[other], v), value)
                for v in q.values
                if _ok(fields[other], v)
            ):
                fail(at, f"{quote(value)} is not one of {other}'s values: {', '.join(q.values)}")
    names = order(s.space)  # a circle leaves its members last, each naming a later one
    for i, path in enumerate(names):
        if any(w in names[i:] for w in s.space[path].when):
            fail(f"sweep.space.{path}.when", "the conditions form a circle; one must come first")
    _check_settings(fail, spec)
    if errors:
        return errors
    return _check_jobs(spec, validate)


def _ok(field, text) -> bool:
    try:
        convert(field, text)
    except ValueError:
        return False
    return True


def _check_choice(fail, at, field, p) -> None:
    if not p.values:
        fail(f"{at}.values", "required: at least one value")
    if p.HasField("low") or p.HasField("high"):
        fail(at, "a choice has values, not low/high")
    seen = set()
    for i, v in enumerate(p.values):
        try:
            value = convert(field, v)
        except ValueError as e:
            fail(f"{at}.values[{i}]", str(e))
            continue
        if value in seen:
            fail(f"{at}.values[{i}]", f"{quote(v)} is given twice")
        seen.add(value)


def _check_range(fail, at, field, p) -> None:
    if p.values:
        fail(f"{at}.values", f"{p.type} is a range: give low and high, not values")
    if not (p.HasField("low") and p.HasField("high")):
        fail(at, f"{p.type} needs low and high, e.g. {p.type}(1, 10)")
        return
    numeric = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
    if p.type != "int" and field.type not in numeric:
        hint = "int(a, b)" if field.type not in _NOT_NUMBERS else "a list of choices"
        fail(at, f"{p.type} draws decimal numbers; this field takes none (use {hint})")
    if p.type == "int":
        if field.type in _NOT_NUMBERS:
            fail(at, "int draws integers; this field is not a number (use a list of choices)")
        if not (float(p.low).is_integer() and float(p.high).is_integer()):
            fail(at, f"int needs integer ends, got {p.low:g} and {p.high:g}")
        lo, hi = _INT_RANGES.get(field.type, (-(2**31), 2**31 - 1))
        if not (lo <= p.low <= hi and lo <= p.high <= hi):
            fail(at, "int's ends are out of range for an integer field")
    if p.low >= p.high:
        fail(at, f"low must be below high, got {p.type}({p.low:g}, {p.high:g})")
    if p.type == "loguniform" and p.low <= 0:
        fail(at, f"loguniform needs low > 0, got {p.low:g}")


def _check_settings(fail, spec) -> None:
    s = spec.sweep
    if s.metric and s.metric not in C.EVAL_METRICS:
        fail("sweep.metric", f"{quote(s.metric)} is not allowed; {C.one_of(C.EVAL_METRICS)}")
    if s.mode and s.mode not in MODES:
        fail("sweep.mode", f"{quote(s.mode)} is not allowed; {C.one_of(MODES)}")
    if s.algorithm and s.algorithm not in ALGORITHMS:
        fail("sweep.algorithm", f"{quote(s.algorithm)} is not allowed; {C.one_of(ALGORITHMS)}")
    if s.pruner and s.pruner not in PRUNERS:
        fail("sweep.pruner", f"{quote(s.pruner)} is not allowed; {C.one_of(PRUNERS)}")
    if s.HasField("max_trials") and not 1 <= s.max_trials <= MAX_TRIALS:
        fail("sweep.max_trials", f"must be in [1, {MAX_TRIALS}], got {s.max_trials}")
    if s.HasField("max_concurrent") and not 1 <= s.max_concurrent <= MAX_CONCURRENT:
        fail("sweep.max_concurrent", f"must be in [1, {MAX_CONCURRENT}], got {s.max_concurrent}")
    if s.HasField("seed") and s.seed < 0:  # optuna seeds numpy, which takes 0..2**32-1
        fail("sweep.seed", f"must be >= 0, got {s.seed}")
    if s.algorithm == "grid":
        ranges = sorted(p for p, q in s.space.items() if q.type in RANGE_TYPES)
        if ranges:
            fail(
                "sweep.algorithm",
                f"grid needs choices only; {', '.join(ranges)} is a range (use random or tpe, "
                "or list its values)",
            )


def _check_jobs(spec, validate) -> list[FieldError]:
    s = spec.sweep
    all_choices = all(p.type == "choice" for p in s.space.values())
    if s.algorithm in ("grid", "") and all_choices and len(grid(s)) > MAX_GRID_POINTS:
        return [FieldError("sweep.space", f"the grid has more than {MAX_GRID_POINTS:,} points")]
    found: dict[tuple[str, str], str] = {}  # a problem -> the other values it came with
    points = check_points(s)
    counts: dict[tuple[str, str], int] = {}
    # The points a problem could have come from: all of them, or (a swept value's) those
    # drawing that value. Found at fewer, it depends on the others: they are named.
    could: dict[tuple[str, str], int] = {}
    for point in points:
        for e in validate(apply(spec, point)):
            swept = next((p for p in point if e.path == p or e.path.startswith(p + ".")), None)
            if swept is not None:
                value = fmt(point[swept])
                key = (f"sweep.space.{swept}", f"{value}: {e.message}")
                if key not in could:
                    could[key] = sum(swept in q and fmt(q[swept]) == value for q in points)
            else:
                key = (e.path, e.message)
                could[key] = len(points)
            counts[key] = counts.get(key, 0) + 1
            others = [f"{k}={fmt(v)}" for k, v in point.items() if k != swept]
            found.setdefault(key, ", ".join(others))
    errors = []
    for (path, message), where in found.items():
        if where and counts[(path, message)] < could[(path, message)]:
            message = f"{message} (with {where})"
        errors.append(FieldError(path, message))
    return errors


# ---- defaults ----------------------------------------------------------------------------


def resolve(spec: spec_pb2.JobSpec) -> spec_pb2.JobSpec:
    """A copy of a checked sweep spec with the sweep block's defaults filled in."""
    out = spec_pb2.JobSpec()
    out.CopyFrom(spec)
    s = out.sweep
    all_choices = all(p.type == "choice" for p in s.space.values())
    s.algorithm = s.algorithm or ("grid" if all_choices else "tpe")
    s.metric = s.metric or spec.eval.metric or "accuracy"
    s.mode = s.mode or ("min" if s.metric == "loss" else "max")
    s.pruner = s.pruner or "none"
    if not s.HasField("seed"):
        s.seed = 0
    if s.algorithm == "grid":
        size = len(grid(s))
        s.max_trials = min(s.max_trials, size) if s.HasField("max_trials") else size
    elif not s.HasField("max_trials"):
        s.max_trials = DEFAULT_MAX_TRIALS
    if not s.HasField("max_concurrent"):
        s.max_concurrent = DEFAULT_MAX_CONCURRENT
    return out
