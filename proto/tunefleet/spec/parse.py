"""YAML/dict -> JobSpec, reporting every unknown key and wrong type with its path.

protobuf's own ``json_format.ParseDict`` stops at the first problem and names it in
protobuf terms; users deserve the whole list, in YAML terms. So we walk the dict against
the message descriptor first, and only hand it to ParseDict once it is known to be clean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tunefleet.spec.errors import FieldError, SpecError
from tunefleet.v1 import spec_pb2

_INT_TYPES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _fields_by_key(desc: Descriptor) -> dict[str, FieldDescriptor]:
    keys: dict[str, FieldDescriptor] = {}
    for f in desc.fields:
        keys[f.name] = f
        keys[f.json_name] = f
    return keys


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    # `label` is deprecated in newer protobuf releases in favour of `is_repeated`.
    rep = getattr(field, "is_repeated", None)
    if rep is not None:
        return rep() if callable(rep) else bool(rep)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _scalar(field: FieldDescriptor, value: Any, path: str, errors: list[FieldError]) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        if isinstance(value, bool):
            errors.append(
                FieldError(
                    path,
                    f"expected a string, got {value!r}; quote it "
                    "(YAML reads no/yes/on/off as booleans)",
                )
            )
            return None
        if isinstance(value, (int, float)):
            errors.append(
                FieldError(path, f"expected a string, got the number {value!r}; quote it")
            )
            return None
        if not isinstance(value, str):
            errors.append(FieldError(path, f"expected a string, got {type(value).__name__}"))
            return None
        return value
    if t == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            errors.append(FieldError(path, f"expected true or false, got {value!r}"))
            return None
        return value
    if t in _INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                errors.append(FieldError(path, f"expected an integer, got {value!r}"))
                return None
        lo, hi = _INT_TYPES[t]
        if not lo <= value <= hi:
            errors.append(FieldError(path, f"{value} is out of range for an integer field"))
            return None
        return value
    if t in _FLOAT_TYPES:
        if isinstance(value, str):
            # YAML 1.1 reads `5e-5` (no dot) as a string; accept what is plainly a number.
            try:
                value = float(value)
            except ValueError:
                errors.append(FieldError(path, f"expected a number, got {value!r}"))
                return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(FieldError(path, f"expected a number, got {value!r}"))
            return None
        if not math.isfinite(value):
            errors.append(FieldError(path, f"expected a finite number, got {value!r}"))
            return None
        return float(value)
    errors.append(FieldError(path, "unsupported field type"))  # pragma: no cover
    return None


def _message(desc: Descriptor, data: Any, path: str, errors: list[FieldError]) -> dict | None:
    if not isinstance(data, dict):
        what = path if path else "the job spec"
        errors.append(
            FieldError(
                path or "<root>", f"expected a mapping for {what}, got {type(data).__name__}"
            )
        )
        return None
    fields = _fields_by_key(desc)
    out: dict[str, Any] = {}
    for key, value in data.items():
        # An empty or non-string key (YAML allows both) is quoted so the path still names it.
        kpath = _join(path, key if isinstance(key, str) and key else repr(key))
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            allowed = ", ".join(f.name for f in desc.fields)
            errors.append(FieldError(kpath, f"unknown field; expected one of: {allowed}"))
            continue
        if field.name in out:
            errors.append(FieldError(kpath, f"given twice (as {field.name} and {field.json_name})"))
            continue
        if value is None:
            continue  # `key:` with nothing after it means "not set"
        parsed = _value(field, value, kpath, errors)
        if parsed is not None:
            out[field.name] = parsed
    return out


def _value(field: FieldDescriptor, value: Any, path: str, errors: list[FieldError]) -> Any:
    if _is_map(field):
        if not isinstance(value, dict):
            errors.append(FieldError(path, f"expected a mapping, got {type(value).__name__}"))
            return None
        value_field = field.message_type.fields_by_name["value"]
        items = {str(k): _scalar(value_field, v, f"{path}.{k}", errors) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not None}
    if _is_repeated(field):
        if not isinstance(value, list):
            errors.append(FieldError(path, f"expected a list, got {type(value).__name__}"))
            return None
        items = [_single(field, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return [v for v in items if v is not None]
    return _single(field, value, path, errors)


def _single(field: FieldDescriptor, value: Any, path: str, errors: list[FieldError]) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type, value, path, errors)
    return _scalar(field, value, path, errors)


def parse_lenient(data: Any) -> tuple[spec_pb2.JobSpec, list[FieldError]]:
    """Parse what can be parsed and list the rest, so that semantic checks can still run
    on the good fields and the user sees every problem in one go."""
    errors: list[FieldError] = []
    clean = _message(spec_pb2.JobSpec.DESCRIPTOR, data, "", errors)
    return json_format.ParseDict(clean or {}, spec_pb2.JobSpec()), errors


def spec_from_dict(data: Any, *, source: str | None = None) -> spec_pb2.JobSpec:
    """Parse a plain dict (as read from YAML or JSON) into a JobSpec, or raise SpecError."""
    spec, errors = parse_lenient(data)
    if errors:
        raise SpecError(errors, source)
    return spec


def spec_to_dict(spec: spec_pb2.JobSpec) -> dict:
    """The YAML/JSON form of a spec, with the same snake_case keys users write."""
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def read_yaml(path: str | Path) -> Any:
    """Read a job YAML file; file-level problems become a SpecError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([FieldError("<file>", f"{p}: no such file")], str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([FieldError("<file>", f"{p}: cannot read: {e}")], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(
            [FieldError("<file>", f"{p}: not valid YAML{where}: {problem}")], str(p)
        ) from None
    if data is None:
        raise SpecError([FieldError("<file>", f"{p}: the file is empty")], str(p))
    return data
