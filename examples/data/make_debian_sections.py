"""Writes a many-class text task from this machine's Debian package index (offline, real).

Each example is a package's description (the synopsis and the first lines of the long
description, without the package name), labelled with its archive section (`utils`, `python`,
`science`, ...). It is real text written by thousands of people, and with 26 sections that
overlap (libs/libdevel, net/web, text/doc) it does not saturate: all-MiniLM-L6-v2 reaches
roughly 0.6-0.7 after a few epochs, so differences between training recipes show.

The source is `apt-cache dumpavail` (the package lists `apt-get update` fetched), so no
download happens here; without lists it says to run `apt-get update`.

    python examples/data/make_debian_sections.py OUT_DIR [--classes 26] [--train 4000]
        [--test 2000] [--seed 0]     # writes OUT_DIR/train.csv and OUT_DIR/test.csv
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def read_index() -> list[tuple[str, str]]:
    """(section, description) of every package in the local apt index, deduplicated."""
    try:
        text = subprocess.run(
            ["apt-cache", "dumpavail"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"apt-cache dumpavail failed ({e}); this needs Debian's apt") from None
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for stanza in text.split("\n\n"):
        section, desc, extra = "", "", []
        lines = stanza.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Section:"):
                section = line.split(":", 1)[1].strip().split("/")[-1]
            elif line.startswith("Description:"):
                desc = line.split(":", 1)[1].strip()
                for cont in lines[i + 1 :]:
                    if not cont.startswith(" "):
                        break
                    cont = cont.strip()
                    if cont != ".":
                        extra.append(cont)
        if not section or not desc:
            continue
        text_ = " ".join([desc, *extra])[:600]
        key = text_.lower()
        if key in seen:
            continue
        seen.add(key)
        rows.append((section, text_))
    if not rows:
        raise SystemExit("the apt index is empty: run `apt-get update` first")
    return rows


def build(out: Path, *, classes: int, train: int, test: int, seed: int) -> dict[str, int]:
    by_section: dict[str, list[str]] = defaultdict(list)
    for section, text in read_index():
        by_section[section].append(text)
    per_class = (train + test) // classes + 1
    # The most common sections that have enough examples for a balanced split.
    common = sorted(by_section, key=lambda s: (-len(by_section[s]), s))[:classes]
    rng = random.Random(seed)
    train_rows, test_rows = [], []
    for section in sorted(common):
        texts = sorted(by_section[section])
        rng.shuffle(texts)
        texts = texts[:per_class]
        n_test = round(len(texts) * test / (train + test))
        test_rows += [(t, section) for t in texts[:n_test]]
        train_rows += [(t, section) for t in texts[n_test:]]
    rng.shuffle(train_rows)
    rng.shuffle(test_rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows[:train]), ("test", test_rows[:test])):
        tmp = out / f".{name}.csv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        tmp.replace(out / f"{name}.csv")
    return {"classes": len(common), "train": min(train, len(train_rows)), "test": min(test, len(test_rows))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--classes", type=int, default=26)
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    info = build(a.out, classes=a.classes, train=a.train, test=a.test, seed=a.seed)
    print(f"wrote {a.out}/train.csv ({info['train']}) and test.csv ({info['test']}), "
          f"{info['classes']} classes", file=sys.stderr)


if __name__ == "__main__":
    main()
