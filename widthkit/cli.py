"""The ``widthkit`` command line: a thin dispatcher over ``widthkit.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` and calls the same public Python API a notebook user calls.
User mistakes (:class:`WidthkitError`) print one line and exit 2; Ctrl-C exits
130 after saying that finished work is kept.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import WidthkitError

COMMANDS = [
    "train", "study", "report", "coord_check",
    "ensemble_bias", "transfer", "transfer_bench",
    "atlas", "atlas_width",
    "lr_phase", "subspace", "ntk_scaling",
]


def _modules():
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"widthkit.commands.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"widthkit.commands.{name}":
                raise
    return mods


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="widthkit", description="Width ladders, ensembles, atlases and width-scaling analyses.")
    p.add_argument("--version", action="version", version=f"widthkit {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info lines")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _modules():
        sp = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or info lines")
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .progress import is_quiet, set_quiet
    was_quiet = is_quiet()
    set_quiet(getattr(args, "quiet", False) or getattr(args, "json", False))
    try:
        return int(args._run(args) or 0)
    except WidthkitError as e:
        print(f"widthkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"widthkit {args.command}: interrupted; finished work is saved. "
              "Rerun the same command with --resume to continue.", file=sys.stderr)
        return 130
    finally:
        set_quiet(was_quiet)  # main() may be called again in the same process (notebooks, tests)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
