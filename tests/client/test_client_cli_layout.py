"""The shape of `ftctl`: `ftctl server/worker` and `python -m tunefleet.coordinator/worker`
take the same flags (one definition each, in the coordinator and worker packages), every
module under client/ sits in the import contracts, and each CLI module stays small."""

from __future__ import annotations

import argparse
import pkgutil
from pathlib import Path

import pytest

import tunefleet.client
from tunefleet.client.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
# ftctl's global flags, accepted by every command (help and defaults are ftctl's own).
GLOBAL = {"--coordinator", "--connect-timeout", "--token-file", "--tls-ca"}
# What `python -m tunefleet.worker` takes itself and ftctl takes as global flags.
CONNECTION = {"--coordinator", "--token-file", "--tls-ca"}


def _command(name: str) -> argparse.ArgumentParser:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """Each option string -> what parsing it does (dest, type, default, choices...) and says."""
    return {
        option: (a.dest, a.type, a.default, a.choices, a.nargs, a.const, a.metavar, a.help)
        for a in parser._actions
        for option in a.option_strings
        if option not in ("-h", "--help")
    }


def test_ftctl_worker_and_python_m_worker_take_the_same_flags():
    from tunefleet.worker.__main__ import build_parser as worker_parser

    ftctl, module = _options(_command("worker")), _options(worker_parser())
    assert set(ftctl) - GLOBAL == set(module) - CONNECTION
    assert set(ftctl) >= CONNECTION  # as global flags
    for option in set(module) - CONNECTION:
        assert ftctl[option] == module[option], option
    # What deploy files rely on, and `ftctl worker` lacked before the flags were shared.
    assert {"--drain-grace-s", "--poll-s", "--work-dir", "--min-free-mb"} <= set(ftctl)


def test_ftctl_server_and_python_m_coordinator_take_the_same_flags():
    from tunefleet.coordinator.__main__ import build_parser as coordinator_parser

    ftctl, module = _options(_command("server")), _options(coordinator_parser())
    assert set(ftctl) - GLOBAL == set(module)
    for option in module:
        assert ftctl[option] == module[option], option


def test_ftctl_worker_flags_reach_the_daemon(tmp_path):
    from tunefleet.worker.command_line import daemon_from_args

    args = build_parser().parse_args(
        ["worker", "--coordinator", "127.0.0.1:1", "--gpus", "0", "--address", "127.0.0.1"]
        + ["--artifacts", str(tmp_path / "a"), "--work-dir", str(tmp_path / "w")]
        + ["--drain-grace-s", "7", "--poll-s", "0.5", "--min-free-mb", "3", "--id", "w9"]
    )
    daemon = daemon_from_args(args)
    assert (daemon.drain_grace_s, daemon.poll_s, daemon.worker_id) == (7.0, 0.5, "w9")
    assert daemon.work_root == (tmp_path / "w").resolve()
    assert daemon.artifacts_root == (tmp_path / "a").resolve()


def _contracts() -> dict[str, dict]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _client_modules() -> set[str]:
    names = {"tunefleet.client"}
    for info in pkgutil.walk_packages(tunefleet.client.__path__, "tunefleet.client."):
        names.add(info.name)
    return names


def test_every_client_module_is_sdk_or_a_launcher():
    """A new module under client/ must join one of the SDK contract's lists (see
    pyproject.toml): the SDK, which imports neither coordinator nor worker even indirectly,
    or the launchers, the only modules that may import them."""
    contracts = _contracts()
    (sdk,) = [c for name, c in contracts.items() if name.startswith("the SDK imports neither")]
    launchers = contracts["only the launchers import the coordinator or the worker"]
    entry = {"tunefleet.client.cli", "tunefleet.client.cli.__main__"}  # assemble the commands
    sdk_modules, launcher_modules = set(sdk["source_modules"]), set(launchers["allowed_importers"])
    assert not sdk_modules & launcher_modules
    assert _client_modules() == sdk_modules | launcher_modules | entry


@pytest.mark.parametrize(
    "path", sorted((ROOT / "client" / "cli").glob("*.py")), ids=lambda p: p.name
)
def test_cli_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 400, path.name
