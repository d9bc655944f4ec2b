"""The ``widthkit`` command line: a thin dispatcher over the public API.

Two kinds of commands, neither listed by hand: every registered analysis (``widthkit.analyses``) gets a
command generated from its contract (its options dataclass gives the flags, see ``commands/_analysis.py``),
and every module of ``widthkit.commands`` (``train``, ``study``, ``report``, ...) defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.  User mistakes (:class:`WidthkitError`) print one line
and exit 2, and so does a file system that refuses a write (read-only, no permission, full, name too long);
Ctrl-C exits 130 after saying that finished work is kept.
"""
from __future__ import annotations

import argparse
import ast
import errno
import functools
import importlib
import pkgutil
import re
import shlex
import sys

from . import commands
from .analyses import get_analysis, list_analyses
from .commands import _analysis
from .errors import WidthkitError
from .progress import quiet, terminal


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
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    flags = {a.dest: a for p in (parser, sub) for a in p._actions if a.option_strings}
    translate = functools.partial(_as_flags, flags=flags)
    try:
        with quiet(getattr(args, "quiet", False) or getattr(args, "json", False)), terminal(translate):
            return int(args._run(args) or 0)
    except WidthkitError as e:
        print(f"widthkit {args.command}: error: {translate(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (read-only, permissions, full, name too long): not a bug
        if e.errno not in _FS_ERRORS:
            raise
        where = f" '{e.filename}'" if e.filename else ""
        print(f"widthkit {args.command}: error: cannot use{where} ({e.strerror}); {_FS_ERRORS[e.errno]}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"widthkit {args.command}: interrupted; finished work is saved. "
              "Rerun the same command with --resume to continue.", file=sys.stderr)
        return 130


_FS_ERRORS = {
    errno.EROFS: "the run directory is read-only: pass --out to write the output elsewhere",
    errno.EACCES: "no permission there: pass --out to write the output elsewhere",
    errno.EPERM: "no permission there: pass --out to write the output elsewhere",
    errno.ENOSPC: "the disk is full: free some space and rerun (finished work is kept)",
    errno.EDQUOT: "the disk quota is exceeded: free some space and rerun (finished work is kept)",
    errno.ENAMETOOLONG: "a name is too long for the file system: choose a shorter --out or recipe name",
}

_API_NAME = re.compile(r"`([A-Za-z_]\w*)(?:=([^`]*))?`")


def _as_flags(message: str, flags: dict[str, argparse.Action]) -> str:
    """Turn the API names of a library message into this command's flags.

    Library messages write parameters between backticks: `` `name` `` or `` `name=value` ``
    (a Python literal).  When ``name`` is the ``dest`` of one of the command's options it
    becomes the flag as typed on the command line: ``--flag``, ``--flag value``, one
    ``--flag item`` per list item for repeatable flags, and ``resume=False`` becomes ``--no-resume``
    where that is the flag.  Other backticked text (shell commands, unknown names) stays as it is.
    """
    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        action = flags.get(name)
        if value in ("True", "False"):
            negated = flags.get(f"no_{name}")
            if value == "False" and isinstance(negated, argparse._StoreTrueAction):
                return negated.option_strings[-1]
            if value == "True" and isinstance(action, argparse._StoreTrueAction):
                return action.option_strings[-1]
            return m.group(0)
        if action is None:
            return m.group(0)
        opt = action.option_strings[-1]
        if value is None:
            return opt
        if isinstance(action, argparse._AppendAction) and value.startswith("["):
            try:
                items = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return f"{opt} {value}"
            return " ".join(f"{opt} {shlex.quote(str(v))}" for v in items)
        return f"{opt} {value}"
    return _API_NAME.sub(flag, message)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
