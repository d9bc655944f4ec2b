"""The ``widthkit`` command line: a thin dispatcher over the public API.

Two kinds of commands, neither listed by hand: every registered analysis (``widthkit.analyses``) gets a
command generated from its contract (its options dataclass gives the flags, see ``commands/_analysis.py``),
and every module of ``widthkit.commands`` (``train``, ``study``, ``report``, ...) defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.  User mistakes (:class:`WidthkitError`) print one line
and exit 2; Ctrl-C exits 130 after saying that finished work is kept.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import pkgutil
import sys

from . import commands
from .analyses import get_analysis, list_analyses
from .commands import _analysis
from .errors import WidthkitError


def _modules():
    """The hand-written command modules (those not starting with '_')."""
    return [importlib.import_module(f"{commands.__name__}.{m.name}")
            for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="widthkit", description="Width ladders, ensembles, atlases and width-scaling analyses.")
    p.add_argument("--version", action="version", version=f"widthkit {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info lines")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_, add_arguments, run):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or info lines")
        add_arguments(sp)
        sp.set_defaults(_run=run)

    for mod in _modules():
        add(mod.NAME, mod.HELP, mod.add_arguments, mod.run)
    for name in list_analyses():
        a = get_analysis(name)
        add(a.name, a.help, functools.partial(_analysis.add_arguments, a=a), functools.partial(_analysis.run, a))
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
