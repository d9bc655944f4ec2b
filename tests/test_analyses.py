"""The analysis contract, over every registered analysis (as timm tests every model of list_models()).

For each analysis on a tiny trained run: default options (plus its ``smoke`` settings) -> run -> saved JSON
-> ``Result.load`` gives the same result -> blocks, which render in the terminal and in the HTML report.
And one name per option: the recipe table's keys, the CLI flags and the Python keywords are the same words.
"""
from __future__ import annotations

import dataclasses
import html
import json
import typing
from pathlib import Path

import pytest

from widthkit.analyses import Subject, get_analysis, list_analyses
from widthkit.analyses.base import Block, analyze, option_fields
from widthkit.cli import build_parser
from widthkit.commands._flags import RESERVED, flag
from widthkit.errors import WidthkitError
from widthkit.results import Result, ResultFileError
from widthkit.store import open_run

from test_ensemble_bias import tiny_run_path as _train_tiny  # a 4-width, 3-seed digits ladder, trained once

EXPECTED = {"ensemble-bias", "transfer", "atlas", "atlas-width", "lr-phase", "subspace", "ntk-scaling", "coord-check",
            "consistency", "hessian"}


@pytest.fixture(scope="module")
def tiny_run_path(tmp_path_factory):
    """A private copy of the shared tiny ladder: analyses here write caches the other tests count."""
    import shutil
    return Path(shutil.copytree(_train_tiny(tmp_path_factory), tmp_path_factory.mktemp("contract") / "run"))


def test_registry_lists_every_analysis_once():
    names = list_analyses()
    assert set(names) >= EXPECTED and len(names) == len(set(names))
    with pytest.raises(WidthkitError, match="did you mean 'ensemble-bias'"):
        get_analysis("ensemble-bais")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_contract_round_trip(name, tiny_run_path, tmp_path, capsys):
    from widthkit.report import _Html
    from widthkit.table import print_blocks
    a = get_analysis(name)
    view = open_run(tiny_run_path).select(0)
    subject = Subject(view.recipe, view if a.needs == "run" else None, tmp_path / a.folder)
    res, files = a.run(subject, a.options(view.recipe, **a.smoke))
    assert isinstance(res, a.Result) and all(f.exists() for f in files)
    saved = a.result_path(subject.out)
    assert saved in files and json.loads(saved.read_text())["schema_version"] == a.Result.schema_version
    again = a.load(subject.out)
    assert again.to_dict() == res.to_dict()
    blocks = a.blocks(again, subject.out)
    assert blocks and all(isinstance(b, Block) and (b.lines or b.tables) for b in blocks)
    assert all(f.path.exists() and f.reading for b in blocks for f in b.figures)
    print_blocks(blocks)
    out = capsys.readouterr().out
    for b in blocks:
        for t in b.tables:
            assert t.caption in out
            assert all(len(r) == len(t.columns) for r in t.rows)
        assert all(line in out for line in b.lines)
    page = _Html(tmp_path / "report.html")
    for b in blocks:
        page.block(b)
    text = "".join(page.parts)
    for b in blocks:
        assert f'id="{b.id}"' in text and all(html.escape(line) in text for line in b.lines)
    # the notebook view: the loaded result's readings and tables as HTML, its figures as matplotlib Figures
    from matplotlib.figure import Figure as MplFigure
    shown = again._repr_html_()
    assert all(html.escape(line) in shown for b in blocks for line in b.lines)
    assert all(html.escape(t.caption) in shown for b in blocks for t in b.tables)
    figs = again.plot()
    assert all(isinstance(f, MplFigure) for f in figs)
    assert len(figs) >= len({f.path for b in blocks for f in b.figures} & {Path(p) for p in files})
    assert figs._repr_html_().count("<img") == len(figs)


def test_one_name_per_option():
    """Recipe keys = dataclass fields = CLI flags = API keywords; every default lives in the dataclass."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in list_analyses():
        a = get_analysis(name)
        fields = [f for f, *_ in option_fields(a.Options)]
        assert not set(fields) & set(RESERVED), name
        flags = {s for act in sub.choices[name]._actions for s in act.option_strings}
        assert {flag(f) for f in fields} <= flags, name
        defaults = a.Options()
        for f, tp, default, help_ in option_fields(a.Options):
            assert help_, f"{name}.{f} has no help text"
            # the recipe table and the keyword both reach the same field
            from widthkit.recipe import Recipe
            r = Recipe(analysis={a.table: {f: default}})
            assert getattr(a.options(r), f) == getattr(defaults, f) == getattr(a.options(None, **{f: default}), f)


def test_old_or_foreign_results_are_one_line_errors(tmp_path):
    a = get_analysis("ensemble-bias")
    path = a.result_path(tmp_path)
    path.write_text(json.dumps({"kind": "EnsembleBiasResult", "schema_version": 0}))
    with pytest.raises(ResultFileError, match="schema version 0") as e:
        a.load(tmp_path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_text(json.dumps({"kind": "TransferResult", "schema_version": 1}))
    with pytest.raises(ResultFileError, match="TransferResult"):
        a.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ResultFileError, match="rerun"):
        a.load(tmp_path)


@dataclasses.dataclass
class Inner(Result):
    x: float


@dataclasses.dataclass
class Outer(Result):
    a: list[float]
    by_width: dict[int, Inner]
    maybe: typing.Optional[Inner] = None


def test_results_rebuild_nested_typed_fields():
    """NaN survives as null, dict keys come back as ints, nested and optional dataclasses are rebuilt."""
    o = Outer([1.0, float("nan")], {16: Inner(2.0)}, None)
    back = Outer.from_dict(json.loads(o.to_json()))
    assert back.by_width == {16: Inner(2.0)} and back.maybe is None and back.a[0] == 1.0 and back.a[1] != back.a[1]


def test_analyze_api_runs_like_the_cli(tiny_run_path, tmp_path):
    res = analyze("ensemble-bias", tiny_run_path, tmp_path, subsets=4, over_training=False)
    assert res.widths == [8, 16, 32, 64] and (tmp_path / "ensemble_bias.json").exists()
    with pytest.raises(WidthkitError, match="did you mean 'subsets'"):
        analyze("ensemble-bias", tiny_run_path, tmp_path, subset=4)
