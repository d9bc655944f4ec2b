"""The analysis contract: one module per analysis, registered by name, with one options dataclass.

An analysis is a subclass of :class:`Analysis` decorated with :func:`register_analysis`, in its own module
of this package (or of any package that exposes it under the ``widthkit.analyses`` entry-point group).
It declares

* ``name``: the registry name and CLI command (``ensemble-bias``); its recipe table and output folder
  are the same word with underscores (``[ensemble_bias]``, ``RUN/ensemble_bias/``);
* ``Options``: a dataclass, the only place its defaults live.  The recipe table's keys, the CLI flags
  (``--max-vectors``) and the Python keyword arguments (``max_vectors=``) are its field names;
  ``opt(default, help)`` declares a field with its help text;
* ``Result``: a :class:`widthkit.results.Result` subclass, saved as ``<folder>/<table>.json`` and
  rebuilt by ``Result.load``;
* ``needs``: ``"run"`` (it reads a trained grid point of the run store) or ``"recipe"`` (it trains its
  own small models from the recipe);

and implements ``applies`` (why it does not apply, or ``""``), ``compute`` (options -> typed result),
``plot`` (result -> PNG files) and ``blocks`` (result -> report :class:`Block`: tables and one-sentence
readings computed from the numbers).  The terminal table, the HTML report and the study summary all
render those same blocks.  ``study``, ``report`` and the CLI loop over :func:`list_analyses`.

In a notebook the same contract shows each result: ``result.plot()`` returns the figures ``plot`` draws
(collected as it saves them, see :func:`widthkit.plots.capture`), and the result displays as the HTML of
its blocks (tables and readings).  Nothing more to write per analysis.
"""
from __future__ import annotations

import dataclasses
import html
import importlib
import pkgutil
import re
import tempfile
import typing
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from ..errors import WidthkitError, unknown
from .. import results
from ..plots import Figures, capture, figure
from ..recipe import Recipe, section
from ..results import Result

ENTRY_POINTS = "widthkit.analyses"


def opt(default: Any, help: str) -> Any:
    """An options field with its help text (lists get a fresh copy per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ------------------------------------------------------------------------------------------ blocks
@dataclass
class Link:
    """A table cell or line that points at a file (rendered as a relative link in HTML)."""

    text: str
    path: Path


@dataclass
class Table:
    """A table of formatted cells: each cell a string or a :class:`Link`."""

    caption: str
    columns: list[str]
    rows: list[list]


@dataclass
class Figure:
    """A PNG file with its one-sentence reading, computed from the numbers it plots."""

    path: Path
    reading: str


@dataclass
class Block:
    """One report section of an analysis: readings, tables, figures, links and conventions."""

    id: str
    title: str
    lines: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Subject:
    """What an analysis runs on: one grid point's recipe, its run-store view (``needs = "run"``), and the
    folder its outputs go to."""

    recipe: Recipe
    point: Any = None           # widthkit.store point view; None for recipe-only analyses
    out: Path = Path(".")

    def require_point(self, name: str):
        if self.point is None:
            raise WidthkitError(f"{name} needs a trained run; pass a run directory (from `widthkit train`)")
        return self.point


# ------------------------------------------------------------------------------------------ contract
class Analysis:
    """Base class of registered analyses (see the module docstring)."""

    name: ClassVar[str]
    help: ClassVar[str]
    Options: ClassVar[type]
    Result: ClassVar[type[Result]]
    needs: ClassVar[str] = "run"
    in_study: ClassVar[bool] = True     # `widthkit study` runs it unless [study] skip names it
    per_run: ClassVar[bool] = False     # reads every grid point at once: runs once per run, into the first point's folder
    order: ClassVar[int] = 100          # place in `list_analyses()`, so in the study, report and CLI help
    smoke: ClassVar[dict] = {}          # options that run it in seconds on a tiny run (the contract test uses them)

    @property
    def table(self) -> str:
        """The recipe table, output folder and result-file stem: the name with underscores."""
        return self.name.replace("-", "_")

    folder = table

    def result_path(self, folder: Path) -> Path:
        return Path(folder) / f"{self.table}.json"

    def options(self, recipe: Recipe | None = None, **given) -> Any:
        """The options: dataclass defaults, then the recipe's table, then ``given`` (None = not given)."""
        given = {k: v for k, v in given.items() if v is not None}
        if recipe is None:
            recipe = Recipe()
        return section(recipe, self.table, self.Options, given)

    def applies(self, subject: Subject, options) -> str:
        """``""`` if the analysis applies to ``subject`` with ``options``, else why not (one line)."""
        return ""

    def prepare(self, options) -> None:
        """Start slow one-time set-up (a compile) in the background; the study calls it before training."""

    def compute(self, subject: Subject, options) -> Result:
        raise NotImplementedError

    def plot(self, result, folder: Path) -> list[Path]:
        """Write the result's figures into ``folder``; returns their paths."""
        return []

    def blocks(self, result, folder: Path) -> list[Block]:
        raise NotImplementedError

    def run(self, subject: Subject, options) -> tuple[Result, list[Path]]:
        """compute, save ``<out>/<table>.json``, plot: the result and every file written."""
        why = self.applies(subject, options)
        if why:
            raise WidthkitError(f"{self.name} does not apply: {why}")
        res = self.compute(subject, options)
        res._folder = Path(subject.out)  # where its files are: plot() and the notebook view read them there
        files = [res.save(self.result_path(subject.out))]
        return res, files + list(self.plot(res, subject.out))

    def load(self, folder: Path):
        """The saved result in ``folder`` (one-line ResultFileError if unreadable or of an old schema)."""
        return self.Result.load(self.result_path(folder))


_REGISTRY: dict[str, Analysis] = {}
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_discovered = False


def register_analysis(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: check the contract and add one instance of ``cls`` to the registry."""
    name = getattr(cls, "name", "")
    if not _NAME.fullmatch(name or ""):
        raise TypeError(f"{cls.__name__}.name must be lower-case words joined by '-', got {name!r}")
    if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
        raise TypeError(f"analysis '{name}' is registered twice ({type(_REGISTRY[name]).__name__}, {cls.__name__})")
    if not (dataclasses.is_dataclass(cls.Options) and isinstance(cls.Options, type)):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    if not (isinstance(cls.Result, type) and issubclass(cls.Result, Result)):
        raise TypeError(f"{cls.__name__}.Result must subclass widthkit.results.Result")
    if cls.needs not in ("run", "recipe"):
        raise TypeError(f"{cls.__name__}.needs must be 'run' or 'recipe', got {cls.needs!r}")
    for f in dataclasses.fields(cls.Options):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.Options.{f.name} has no default")
    _REGISTRY[name] = cls()
    return cls


# ------------------------------------------------------------------------------------------ notebooks
def _analysis_of(res: Result) -> Analysis | None:
    _discover()
    return next((a for a in _REGISTRY.values() if type(res) is a.Result), None)


def result_figures(res: Result) -> Figures:
    """The figures the result's analysis draws, as matplotlib Figures (PNGs written elsewhere come as images).

    Drawn into the result's folder when it has one (a run or a load), else into a temporary folder.
    """
    a = _analysis_of(res)
    if a is None:
        return Figures()
    folder = getattr(res, "_folder", None)
    with tempfile.TemporaryDirectory() as tmp, capture() as figs:
        where = Path(folder) if folder is not None else Path(tmp)
        paths = list(a.plot(res, where))
        if not figs:  # figures the analysis did not draw with widthkit.plots (atlas images)
            paths += [f.path for b in a.blocks(res, where) for f in b.figures]
            for p in dict.fromkeys(Path(p) for p in paths if Path(p).suffix == ".png" and Path(p).exists()):
                fig, ax = figure(1, 1, size=(5, 5))
                ax[0][0].imshow(_read_png(p))
                ax[0][0].set_axis_off()
                ax[0][0].set_title(p.name, fontsize=9)
                figs.append(fig)
    return figs


def _read_png(path: Path):
    import matplotlib.image as mpimg
    return mpimg.imread(path)


def result_html(res: Result) -> str | None:
    """The result's blocks as HTML: titles, one-sentence readings (figures' included) and tables."""
    a = _analysis_of(res)
    if a is None:
        return None
    folder = getattr(res, "_folder", None)
    with tempfile.TemporaryDirectory() as tmp:
        blocks = a.blocks(res, Path(folder) if folder is not None else Path(tmp))
    e = lambda x: html.escape(str(getattr(x, "text", x)))  # noqa: E731 - a cell: text or a Link
    out = []
    for b in blocks:
        out.append(f"<h4>{e(b.title)}</h4>")
        lines = list(dict.fromkeys([*b.lines, *(f.reading for f in b.figures)]))
        if lines:
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in lines) + "</ul>")
        for t in b.tables:
            head = "".join(f"<th>{e(c)}</th>" for c in t.columns)
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t.rows)
            out.append(f"<table><caption>{e(t.caption)}</caption><tr>{head}</tr>{body}</table>")
    return "".join(out)


results.NOTEBOOK.update(figures=result_figures, html=result_html)


def _discover() -> None:
    """Import every module of this package and every ``widthkit.analyses`` entry point (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    pkg = importlib.import_module(__package__)
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name != "base" and not m.name.startswith("_"):
            importlib.import_module(f"{__package__}.{m.name}")
    for ep in metadata.entry_points(group=ENTRY_POINTS):
        ep.load()


def list_analyses() -> list[str]:
    """Names of every registered analysis, by ``order`` then name (the order `study` runs and reports them)."""
    _discover()
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))


def get_analysis(name: str) -> Analysis:
    """The registered analysis ``name`` (``ensemble-bias`` or ``ensemble_bias``)."""
    _discover()
    key = name.replace("_", "-")
    if key not in _REGISTRY:
        raise unknown("analysis", name, _REGISTRY)
    return _REGISTRY[key]


def analysis_tables() -> list[str]:
    """The recipe tables the analyses read."""
    return [get_analysis(n).table for n in list_analyses()]


def check_recipe_tables(recipe: Recipe) -> None:
    """Every analysis table of ``recipe`` names a registered analysis (or is ``[study]``)."""
    known = analysis_tables() + ["study"]
    for t in recipe.analysis:
        if t not in known:
            raise WidthkitError(f"recipe table [{t}]: {unknown('analysis table', t, known)}")


def option_fields(options: type) -> list[tuple[str, Any, Any, str]]:
    """``[(name, type, default, help)]`` of an options dataclass, types resolved."""
    hints = typing.get_type_hints(options)
    out = []
    for f in dataclasses.fields(options):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, hints[f.name], default, f.metadata.get("help", "")))
    return out


def analyze(name: str, source, out: str | Path | None = None, *, point: int | str = 0, **options):
    """Run analysis ``name`` from Python: the same path as ``widthkit <name>``; returns its typed result.

    ``source``: a run directory or ``Run`` (``needs = "run"``; ``point`` picks the grid point of a sweep),
    or a recipe (path, TOML text, dict or :class:`Recipe`) for recipe-only analyses.  ``options``: the
    analysis's option names.  Outputs go to ``out`` (default: the analysis's folder of the point).
    """
    from ..store import open_run, point_folder
    a = get_analysis(name)
    if a.needs == "run":
        run = open_run(source) if isinstance(source, (str, Path)) else source
        view = run.select(point) if len(run.points) > 1 else run.select(0)
        recipe, folder = view.recipe, point_folder(view) / a.folder
    else:
        from ..recipe import resolve_recipe
        view, recipe = None, resolve_recipe(source)
        folder = Path("runs") / recipe.name / a.folder
    subject = Subject(recipe, view, Path(out) if out is not None else folder)
    res, _ = a.run(subject, a.options(recipe, **options))
    return res
