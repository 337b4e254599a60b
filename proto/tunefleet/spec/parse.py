"""YAML/dict -> JobSpec, reporting every unknown key and wrong type with its path.

protobuf's own ``json_format.ParseDict`` stops at the first problem and names it in
protobuf terms; users deserve the whole list, in YAML terms. So we walk the dict against
the message descriptor first, and only hand it to ParseDict once it is known to be clean.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tunefleet.limits import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, quote
from tunefleet.spec.errors import FieldError, SpecError
from tunefleet.spec.sweep import normalize_block
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
                    f"expected a string, got {quote(value)}; quote it "
                    "(YAML reads no/yes/on/off as booleans)",
                )
            )
            return None
        if isinstance(value, (int, float)):
            errors.append(
                FieldError(path, f"expected a string, got the number {quote(value)}; quote it")
            )
            return None
        if not isinstance(value, str):
            errors.append(FieldError(path, f"expected a string, got {type(value).__name__}"))
            return None
        return value
    if t == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            errors.append(FieldError(path, f"expected true or false, got {quote(value)}"))
            return None
        return value
    if t in _INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                errors.append(FieldError(path, f"expected an integer, got {quote(value)}"))
                return None
        lo, hi = _INT_TYPES[t]
        if not lo <= value <= hi:
            errors.append(FieldError(path, f"{quote(value)} is out of range for an integer field"))
            return None
        return value
    if t in _FLOAT_TYPES:
        if isinstance(value, str):
            # YAML 1.1 reads `5e-5` (no dot) as a string; accept what is plainly a number.
            try:
                value = float(value)
            except ValueError:
                errors.append(FieldError(path, f"expected a number, got {quote(value)}"))
                return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(FieldError(path, f"expected a number, got {quote(value)}"))
            return None
        if not math.isfinite(value):
            errors.append(FieldError(path, f"expected a finite number, got {quote(value)}"))
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
        kpath = _join(path, key if isinstance(key, str) and key else quote(key))
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            errors.append(FieldError(kpath, _unknown_field(desc, key)))
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


def _unknown_field(desc: Descriptor, key: Any) -> str:
    """The message for an unknown key: the nearest field names of this message (`train.epoch`: did you
    mean epochs?; a name of another message would not parse here either) and all of them."""
    names = [f.name for f in desc.fields]
    close: list[str] = []
    if isinstance(key, str):
        lowered = {n.lower(): n for n in names}
        close = [
            lowered[m] for m in difflib.get_close_matches(key.lower(), lowered, n=3, cutoff=0.75)
        ]
        # A key that contains a field name (`optimizer_name` -> name): also a candidate.
        close += [n for n in names if n not in close and len(n) > 2 and n in key.lower()]
    hint = f"did you mean {' or '.join(close[:3])}? " if close else ""
    return f"unknown field; {hint}expected one of: {', '.join(names)}"


def _value(field: FieldDescriptor, value: Any, path: str, errors: list[FieldError]) -> Any:
    if _is_map(field):
        if not isinstance(value, dict):
            errors.append(FieldError(path, f"expected a mapping, got {type(value).__name__}"))
            return None
        value_field = field.message_type.fields_by_name["value"]
        items = {str(k): _single(value_field, v, f"{path}.{k}", errors) for k, v in value.items()}
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
    if isinstance(data, dict) and "sweep" in data:  # its YAML shorthand, spelt out
        data = {**data, "sweep": normalize_block(data["sweep"], errors)}
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
    """Read a job YAML file; file-level problems become a SpecError naming the file.

    A job file is small, so anything that makes one expensive is refused before the YAML
    is turned into objects: more than MAX_YAML_BYTES (read no further: `/dev/zero` is a
    file too), nesting deeper than MAX_YAML_DEPTH (PyYAML's composer recurses), more than
    MAX_YAML_NODES once aliases are expanded (a 495-byte "billion laughs" file is a few
    nodes to parse and billions to walk), and a key given twice in one mapping (YAML keeps
    the last one silently)."""
    p = Path(path)

    def fail(message: str) -> SpecError:
        return SpecError([FieldError("<file>", f"{p}: {message}")], str(p))

    try:
        with p.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a folder, not a job file") from None
    except OSError as e:
        raise fail(f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_YAML_BYTES:
        raise fail(f"larger than {MAX_YAML_BYTES:,} bytes, the limit for a job file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"cannot read: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        _check_shape(text)
        data = yaml.load(text, Loader=_JobLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooBig as e:
        raise fail(str(e)) from None
    except yaml.reader.ReaderError as e:  # it has no mark, and its text spans lines
        line = text.count("\n", 0, e.position) + 1
        column = e.position - text.rfind("\n", 0, e.position)
        code = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or " ")
        raise fail(
            f"not valid YAML at line {line}, column {column}: character U+{code:04X} is not "
            "allowed (no control characters but tab and newline; is it a text file?)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise fail(f"not valid YAML{where}: {problem}") from None
    if data is None:
        raise fail("the file is empty")
    return data


class _TooBig(ValueError):
    pass


def _check_shape(text: str) -> None:
    """Depth and expanded size from PyYAML's event stream (its parser does not recurse;
    its composer does): each collection's size, counted once, is added again wherever an
    alias repeats it, so a bomb is caught after reading its few hundred bytes."""
    sizes: dict[str, int] = {}  # anchor -> nodes under it, aliases expanded
    stack: list[list] = [[0, None]]  # [nodes so far, anchor] per open collection
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([1, event.anchor])
            if len(stack) - 1 > MAX_YAML_DEPTH:
                raise _TooBig(
                    f"nested deeper than {MAX_YAML_DEPTH} levels (line {event.start_mark.line + 1})"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            count, anchor = stack.pop()
            if anchor:
                sizes[anchor] = count
            stack[-1][0] += count
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                sizes[event.anchor] = 1
            stack[-1][0] += 1
        elif isinstance(event, yaml.AliasEvent):
            stack[-1][0] += sizes.get(event.anchor, 1)
        else:
            continue
        if stack[-1][0] > MAX_YAML_NODES:
            raise _TooBig(
                f"more than {MAX_YAML_NODES:,} values once aliases are expanded "
                f"(line {event.start_mark.line + 1}); a job file needs far fewer"
            )


class _JobLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, naming both lines."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                merge = key_node.tag == "tag:yaml.org,2002:merge"
                if not isinstance(key_node, yaml.ScalarNode) or merge:
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader says so itself
                    continue
                seen[key] = line
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {quote(key)} at line {line} (first given at line "
                        f"{first}); give each key once",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)
