"""The `streamjobs` command: its version, and `streamjobs token ...` to mint or revoke tokens."""

from __future__ import annotations

import argparse
import sys

from shared import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamjobs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamjobs {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.add_parser(
        "token",
        add_help=False,
        help="mint a token (token USER [--scopes ...]) or revoke one (token revoke JTI)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["token"]:
        # Imported here: the token commands reach Kafka; `--version` needs none of it.
        from shared import token_cli

        return token_cli.main(args[1:])
    parser = _parser()
    parser.parse_args(args)
    parser.print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
