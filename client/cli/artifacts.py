"""`ftctl plot` and `ftctl artifacts`: what a job leaves behind, its curves (drawn by
tunefleet.client.plot) and its artifacts (downloaded by tunefleet.worker.artifact_store,
the same code that uploaded them)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from tunefleet.client.cli.common import EXIT_OK, Commands, client, stdout
from tunefleet.client.errors import TunefleetError
from tunefleet.limits import printable


def register(commands: Commands) -> None:
    p = commands.add(
        "plot",
        plot,
        "draw a job's loss, eval metrics and learning rate to a PNG (a sweep: its trials' "
        "validation curves and metric vs each swept field)",
    )
    p.add_argument("job", metavar="JOB|SWEEP")
    p.add_argument("-o", "--output", metavar="PNG", help="(default: JOB-curves.png)")

    p = commands.add(
        "artifacts", artifacts, "list a job's artifacts, or download the uploaded ones"
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("--download", metavar="DIR", help="fetch the uploaded artifacts into DIR")
    p.add_argument(
        "--name", action="append", metavar="NAME", help="only this artifact (repeatable): model..."
    )


def plot(args) -> int:
    from tunefleet.client.plot import plot_job
    from tunefleet.client.sweep_plot import plot_sweep

    draw = plot_sweep if args.job.startswith("sweep-") else plot_job
    output = _plot_path(args.output or f"{args.job}-curves.png")
    with client(args) as sdk:
        path = draw(sdk, args.job, output)
    stdout().print(Text(f"wrote {path}"))
    return EXIT_OK


def _plot_path(output: str) -> Path:
    """The file `plot` writes, checked before anything is fetched: no suffix means .png (as
    matplotlib would add, so the path printed is the one written); a folder, or a format
    matplotlib cannot write, is refused with what it takes."""
    path = Path(output)
    if path.is_dir():
        raise TunefleetError(
            f"-o {path}: is a folder; give a file name, e.g. {path / 'curves.png'}"
        )
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:  # drawing says how to install it (plot.py)
        return path
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        accepted = ", ".join(f".{f}" for f in sorted(formats))
        raise TunefleetError(
            f"-o {path}: cannot write a {path.suffix} file; use one of: {accepted}"
        )
    return path


def _download_dir(download: str | None) -> Path | None:
    """The folder `--download` names, checked before anything is fetched: a file there,
    or no name at all, is refused with what the flag takes (a folder, made if missing)."""
    if download is None:
        return None
    if not download.strip():
        raise TunefleetError("--download: give the folder to download into, e.g. --download ./out")
    dest = Path(download)
    if dest.exists() and not dest.is_dir():
        raise TunefleetError(
            f"--download {dest}: is a file, not a folder; give a folder (it is made if missing)"
        )
    return dest


def artifacts(args) -> int:
    from tunefleet.worker.artifact_store import ArtifactStoreError, download_job

    dest = _download_dir(args.download)
    with client(args) as sdk:
        job = sdk.get(args.job)
    console = stdout()
    if dest is None:
        if not job.artifacts:
            console.print(f"job {job.id} has no artifacts ({job.state.value})")
        for name, location in sorted(job.artifacts.items()):
            console.print(Text(printable(f"{name:<24} {location}")))
        return EXIT_OK
    try:
        files = download_job(job.artifacts, dest, args.name or ())
    except ArtifactStoreError as e:
        raise TunefleetError(f"job {job.id}: {e}") from None
    except OSError as e:  # a file where the download needs a folder, a full disk...
        where = f" {e.filename}" if e.filename else ""
        raise TunefleetError(f"--download {dest}: cannot write{where}: {e.strerror or e}") from None
    for path in files:
        console.print(Text(printable(str(path))))
    n = len(files)
    console.print(
        Text(printable(f"downloaded {n} file{'s' if n != 1 else ''} of job {job.id} to {dest}"))
    )
    return EXIT_OK
