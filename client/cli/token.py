"""`ftctl token NAME`: a new random token and the tokens-file entry that holds its hash
(tunefleet.coordinator.auth makes both)."""

from __future__ import annotations

from rich.text import Text

from tunefleet.client.cli.common import EXIT_OK, Commands, stderr
from tunefleet.client.errors import TunefleetError


def register(commands: Commands) -> None:
    p = commands.add(
        "token", make_token, "make a new random token and its tokens-file entry", flags=()
    )
    p.add_argument("name", metavar="NAME", help="who uses it (shown in logs, recorded on jobs)")
    p.add_argument("--role", choices=("admin", "user", "worker"), default="user")


def make_token(args) -> int:
    from tunefleet.coordinator.auth import new_token, tokens_entry

    if not args.name.strip():  # a tokens file refuses an entry without a name
        raise TunefleetError("NAME: required, who uses the token")
    token = new_token()
    print(token)
    stderr().print(
        Text(
            "Give the token above to its user (e.g. in a file for --token-file, chmod 600);\n"
            "add this entry, which holds only its hash, to the coordinator's --tokens file:\n"
            f"- {tokens_entry(args.name, args.role, token)}"
        )
    )
    return EXIT_OK
