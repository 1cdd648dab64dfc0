"""The ``geoattn`` command line: thin sub-commands that parse, call the library and print."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from geoattn import __version__
    from geoattn.backends import describe

    try:
        rows = {"geoattn": __version__, **describe()}
    except ValueError as exc:  # a bad GEOATTN_BACKEND
        raise CLIError(str(exc)) from None
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}} : {value}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from geoattn.registration.commands import run_register

    try:
        return run_register(args)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _cmd_evaluate_3dmatch(args: argparse.Namespace) -> int:
    from geoattn.registration.commands import run_evaluate

    try:
        return run_evaluate(args)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _detection_command(name: str):
    """A sub-command handler that calls ``geoattn.detection.commands.run_<name>`` and reports user errors."""

    def run(args: argparse.Namespace) -> int:
        from geoattn.detection import commands

        try:
            return getattr(commands, f"run_{name}")(args)
        except (OSError, ValueError) as exc:
            raise CLIError(str(exc)) from None

    return run


_DETECTION_COMMANDS = (
    ("detect", "detect", "3-D boxes in one LiDAR frame (KITTI labels out, bird's-eye picture)"),
    ("evaluate-kitti", "evaluate_kitti", "KITTI 2-D / BEV / 3-D / AOS average precision of a prediction folder"),
    ("evaluate-waymo", "evaluate_waymo", "Waymo mAP / mAPH at LEVEL_1 and LEVEL_2 of a result pickle"),
    ("synthetic-kitti", "synthetic_kitti", "write synthetic LiDAR scenes in the KITTI layout"),
    ("create-gt-database", "create_gt_database", "cut every labelled object out of a KITTI split for GT sampling"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions and active backends")
    info.set_defaults(func=_cmd_info)
    from geoattn.registration.commands import add_evaluate_arguments, add_register_arguments

    register = sub.add_parser("register", help="rigidly align a source point cloud to a target (RoITr or FPFH)")
    add_register_arguments(register)
    register.set_defaults(func=_cmd_register)
    evaluate = sub.add_parser("evaluate-3dmatch", help="IR / FMR / RR on a 3DMatch or 3DLoMatch benchmark")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate_3dmatch)
    from geoattn.detection import commands as detection_commands

    for command, name, description in _DETECTION_COMMANDS:
        parser_ = sub.add_parser(command, help=description)
        getattr(detection_commands, f"add_{name}_arguments")(parser_)
        parser_.set_defaults(func=_detection_command(name))
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
