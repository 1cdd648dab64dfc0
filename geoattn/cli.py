"""The ``geoattn`` command line: thin sub-commands that parse, call the library and print."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from geoattn import __version__
    from geoattn.backends import describe

    rows = {"geoattn": __version__, **describe()}
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}} : {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions and active backends")
    info.set_defaults(func=_cmd_info)
    return parser


class CLIError(Exception):
    """An error to report as one line on stderr with a non-zero exit status."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"geoattn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geoattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
