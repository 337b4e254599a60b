"""The engine reads CSV files with the csv module (data/tables.py: no pandas import in each
training process) and must read them as pandas.read_csv(dtype=str, keep_default_na=False)
did: the same columns, values, row count, for the files users write."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tunefleet.worker.engine.data.tables import _read_file_table
from tunefleet.worker.engine.errors import InvalidJobInput

FILES = {
    "plain": "text,label\nthe cat sat,pos\nbad plot,neg\n",
    "no final newline": "text,label\na,1\nb,0",
    "quoted comma and quote": 'text,label\n"a, b",1\n"say ""hi""",0\n',
    "multiline field": 'text,label\n"line one\nline two",1\nx,0\n',
    "blank lines": "text,label\n\na,1\n\n\nb,0\n\n",
    "NA and numbers kept as written": "text,label\nNA,007\nnull,1.50\n,0\n",
    "byte order mark": "\ufefftext,label\na,1\n",
    "crlf": "text,label\r\na,1\r\nb,0\r\n",
    "repeated header": "text,text,label,text\na,b,1,c\n",
    "short row": "text,label,extra\na,1\nb,0,z\n",
    "empty fields": "text,label\n,\n ,x\n",
    "unicode": "text,label\ncafé ☕,1\n日本語,0\n",
    "header only": "text,label\n",
    "index column and trailing comma": ",text,label,\n0,a,1,\n1,b,0,\n",
}


def _pandas(path) -> dict[str, list]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    as_none = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    return {str(c): [as_none(v) for v in df[c].tolist()] for c in df.columns}


@pytest.mark.parametrize("content", list(FILES.values()), ids=list(FILES))
def test_reads_as_pandas_did(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_bytes(content.encode("utf-8"))
    table = _read_file_table(str(path), "csv")
    expected = _pandas(path)
    assert list(table.columns) == list(expected)
    assert {name: table.column(name, "x") for name in table.columns} == expected
    assert table.num_rows == len(next(iter(expected.values())))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\na,1,extra\n", "cannot read as csv: line 2 has 3 fields, the header has 2"),
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ('text,label\na,1\n"b"c,1\n', "the row starting on line 3: ',' expected after"),
        ('text,label\na,1\n\n"b,1\nc,2\n', "the row starting on line 4: unexpected end of"),
    ],
)
def test_bad_files_name_the_file_and_the_line(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(InvalidJobInput, match=message) as e:
        _read_file_table(str(path), "csv")
    assert str(e.value).startswith(str(path))


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\n\xff\xfe,1\n")
    with pytest.raises(InvalidJobInput, match="cannot read as csv: 'utf-8' codec"):
        _read_file_table(str(path), "csv")


def test_a_long_field_is_read_and_the_process_limit_is_left_as_it_was(tmp_path):
    """Fields past csv's 128 KiB default are read (pandas had no limit), and the module's
    process-wide limit is put back: the spec validator relies on it."""
    import csv

    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "w" * 300_000 + ",1\n")
    before = csv.field_size_limit()
    assert _read_file_table(str(path), "csv").column("text", "x") == ["w" * 300_000]
    assert csv.field_size_limit() == before


def test_jsonl_with_a_byte_order_mark_reads_and_one_not_utf8_is_named(tmp_path):
    """A BOM (Windows editors) is dropped as for CSV; a Latin-1 file is an input error
    naming the file, not a UnicodeDecodeError traceback."""
    path = tmp_path / "data.jsonl"
    path.write_text('\ufeff{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    table = _read_file_table(str(path), "jsonl")
    assert table.column("text", "data.text_column") == ["a", "b"]
    path.write_bytes('{"text": "caf\xe9", "label": "x"}\n'.encode("latin-1"))
    with pytest.raises(InvalidJobInput, match="cannot read as jsonl: the file is not UTF-8") as e:
        _read_file_table(str(path), "jsonl")
    assert str(e.value).startswith(str(path))


@pytest.mark.parametrize("sep,name", [(";", "';'"), ("\t", "tabs")])
def test_a_file_separated_by_semicolons_or_tabs_is_named_so(tmp_path, sep, name):
    path = tmp_path / "data.csv"
    path.write_text(f"text{sep}label\na{sep}x\n")
    table = _read_file_table(str(path), "csv")
    with pytest.raises(InvalidJobInput, match=f"looks separated by {name}, and data.source csv"):
        table.column("text", "data.text_column")
