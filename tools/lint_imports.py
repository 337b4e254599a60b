"""Check the import contracts in pyproject.toml ([tool.importlinter]) with `lint-imports`.

    .venv/bin/python tools/lint_imports.py            # what `make lint` runs
    .venv/bin/python tools/lint_imports.py --verbose  # any lint-imports option passes through

Why a wrapper: import-linter's graph builder (grimp) finds a package's modules by walking
the one folder its root package lives in, but our `tunefleet` namespace is assembled from
four folders by `package-dir` (proto/tunefleet, coordinator, worker, client). So this builds
a throwaway folder of symlinks shaped like the installed namespace, puts it first on the
path, and runs `lint-imports` against it; the contracts then name modules exactly as code
imports them. Exits with lint-imports' status (non-zero when a contract is broken).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where each part of the namespace lives (pyproject.toml, [tool.setuptools] package-dir).
ROOMS = {"coordinator": "coordinator", "worker": "worker", "client": "client"}


def build_tree(into: Path) -> Path:
    """`into`/tunefleet: the contract's folder with the runtime rooms linked in."""
    package = into / "tunefleet"
    package.mkdir()
    for entry in (ROOT / "proto" / "tunefleet").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in ROOMS.items():
        (package / name).symlink_to(ROOT / folder, target_is_directory=True)
    return package


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="tunefleet-imports-") as tmp:
        build_tree(Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]))
        # The tree is new every run, so grimp's cache could never be reused.
        command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                   "lint_imports_command()", "--no-cache", "--no-logo", *args]
        return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
