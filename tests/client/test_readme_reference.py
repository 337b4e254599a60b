"""README's reference parts stay true: every JobSpec field is in the defaults table with
the default tunefleet.spec really fills in, and the sample `ftctl validate` output is what
the command prints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunefleet.spec import prepare, spec_to_dict
from tunefleet.spec.parse import _is_map, _is_repeated
from tunefleet.v1 import spec_pb2

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FTCTL = Path(sys.executable).parent / "ftctl"


def _section(title: str) -> str:
    start = README.index(title)
    end = README.index("\n### ", start + len(title))
    return README[start:end]


def _defaults_table() -> dict[str, str]:
    """field path -> its default cell; a row may name several fields."""
    rows = {}
    for line in _section("### Every field and its default").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 2 or cells[0] in ("field", "---"):
            continue
        for name in re.findall(r"`([a-z_.]+)`", cells[0]):
            rows[name] = cells[1]
    return rows


def _leaf_fields(desc=spec_pb2.JobSpec.DESCRIPTOR, prefix="") -> list[str]:
    paths = []
    for f in desc.fields:
        path = prefix + f.name
        message = f.message_type is not None and not _is_map(f)
        if message and not _is_repeated(f):
            paths += _leaf_fields(f.message_type, path + ".")
        else:
            paths.append(path)  # a scalar, a list or a map (`labels`, `lr_groups`)
    return paths


def test_every_jobspec_field_has_its_default_in_the_readme():
    table = _defaults_table()
    missing = [p for p in _leaf_fields() if p not in table]
    assert not missing, f"add these to README's 'Every field and its default': {missing}"
    assert all(table.values()), [k for k, v in table.items() if not v]
    stale = set(table) - set(_leaf_fields())
    assert not stale, f"README lists fields JobSpec does not have: {stale}"


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "labels":
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def _mentions(cell: str, value) -> bool:
    """Whether one of the cell's `code` tokens is `value` (5e-5 == 5e-05, no == "no")."""
    for token in re.findall(r"`([^`]+)`", cell):
        if token == str(value) or (isinstance(value, bool) and token == str(value).lower()):
            return True
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                if float(token) == value:
                    return True
            except ValueError:
                continue
        elif isinstance(value, list):
            try:
                if yaml.safe_load(token) == value:
                    return True
            except yaml.YAMLError:
                continue
    return False


SPECS = {
    "text, full": {
        "model": {"source": "hf", "name": "m"},
        "data": {"source": "csv", "train": "t.csv"},
    },
    "images, sgd, lora": {
        "model": {"source": "torchvision", "name": "resnet18"},
        "data": {"source": "torchvision", "name": "CIFAR10", "root": "data"},
        "optimizer": {"name": "sgd"},
        "finetune": {"strategy": "lora"},
        "compression": {"prune": {"amount": 0.5}, "quantize": {}},
    },
    "gradual": {
        "model": {"source": "hf", "name": "m"},
        "data": {"source": "hf", "name": "glue"},
        "finetune": {"strategy": "gradual"},
    },
    "lp_ft": {
        "model": {"source": "hf", "name": "m"},
        "data": {"source": "jsonl", "train": "t.jsonl"},
        "finetune": {"strategy": "lp_ft"},
        "schedule": {"name": "step"},
    },
}
# Not a literal in the table: a formula of other fields.
FORMULAS = {"resources.processes"}


@pytest.mark.parametrize("name", SPECS)
def test_the_readme_defaults_are_the_ones_filled_in(name):
    given = {"name": "x"} | _flatten(SPECS[name])
    spec = prepare({"name": "x", **SPECS[name]}, base_dir=ROOT, check_paths=False)
    table = _defaults_table()
    wrong = {}
    for path, value in _flatten(spec_to_dict(spec)).items():
        if path not in given and path not in FORMULAS and not _mentions(table[path], value):
            wrong[path] = (value, table[path])
    assert not wrong, json.dumps(wrong, indent=1, default=str)


def _block(after: str, fence: str) -> str:
    start = README.index(fence, README.index(after)) + len(fence)
    return README[start : README.index("```", start)]


def test_the_readme_validation_sample_is_the_real_output(tmp_path):
    section = "\n### Validation\n"
    (tmp_path / "bad.yaml").write_text(_block(section, "```yaml\n"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "architectures": ["BertModel"],
                "num_hidden_layers": 6,
                "hidden_size": 32,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 512,
                "vocab_size": 100,
            }
        )
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\na,x\nb,y\n")
    sample = _block(section, "```text\n")
    command, *expected = sample.rstrip("\n").splitlines()
    assert command == "$ ftctl validate bad.yaml"
    proc = subprocess.run(
        [str(FTCTL), "validate", "bad.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    real = proc.stderr.replace(str(tmp_path), "/home/me/jobs").rstrip("\n").splitlines()
    assert real == expected
