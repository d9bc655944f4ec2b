"""widthkit behaves like a library: typed errors, warnings and logging, quiet mode per call, no global
matplotlib switch, shipped recipes by name, one version."""
import argparse
import configparser
import importlib.metadata
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import widthkit
from widthkit import progress
from widthkit.cli import _as_flags, main
from widthkit.errors import (ClusterError, DataError, DataNotFoundError, JobsFailedError, OptionalDependencyError,
                             RecipeError, RunStoreError, UnknownNameError, WidthkitError, WidthkitWarning, unknown)
from widthkit.recipe import find_recipe, read_recipe_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "widthkit" / "recipes"


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("cls,builtin", [
    (RecipeError, ValueError), (UnknownNameError, KeyError), (UnknownNameError, ValueError),
    (DataNotFoundError, FileNotFoundError), (DataError, ValueError), (RunStoreError, OSError),
    (ClusterError, ConnectionError), (JobsFailedError, RuntimeError), (OptionalDependencyError, ImportError),
])
def test_errors_are_caught_as_builtins_and_stay_one_line(cls, builtin):
    with pytest.raises(builtin) as e:
        raise cls("the problem; the fix")
    assert isinstance(e.value, WidthkitError)
    assert str(e.value) == "the problem; the fix"  # no quotes (KeyError), no errno (OSError)


def test_every_public_name_resolves_and_errors_are_exported():
    for name in widthkit.__all__:
        assert getattr(widthkit, name) is not None, name
    assert widthkit.RecipeError is RecipeError and widthkit.WidthkitWarning is WidthkitWarning
    assert widthkit.RunPoint.__module__ == "widthkit.store"


def test_unknown_is_an_unknown_name_error():
    e = unknown("model family", "mpl", ["mlp", "cnn"])
    assert isinstance(e, UnknownNameError) and isinstance(e, KeyError)
    assert str(e) == "unknown model family 'mpl' (did you mean 'mlp'?); valid: cnn, mlp"


# -------------------------------------------------------------------------------- warnings and logging
def test_warn_is_a_widthkit_warning_and_info_is_logged(caplog):
    with pytest.warns(WidthkitWarning, match="^width 8 is unfinished$"):
        progress.warn("width 8 is unfinished")
    assert issubclass(WidthkitWarning, UserWarning)
    with caplog.at_level(logging.INFO, logger="widthkit"):
        progress.info("training width 8")
        with progress.quiet(True):
            progress.info("not shown")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == \
        [("widthkit", logging.INFO, "training width 8")]


def test_terminal_shows_one_line_each_as_the_cli_did(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outside the block: not shown
        with progress.terminal():
            progress.info("[digits 0-4 -> 5-9] source ladder " + "x" * 150)
            for _ in range(2):  # every time, not once per place
                progress.warn("skipping [key=value] widths")
            with progress.quiet(True):
                progress.info("not shown")
                progress.warn("shown even when quiet")
        progress.warn("after the block")
        progress.info("after the block")
    assert capsys.readouterr().err.splitlines() == [
        "[digits 0-4 -> 5-9] source ladder " + "x" * 150,  # markup-free, not wrapped
        "warning: skipping [key=value] widths", "warning: skipping [key=value] widths",
        "warning: shown even when quiet"]


def test_cli_names_flags_where_the_library_names_parameters(monkeypatch, tmp_path, capsys):
    from widthkit import ladder

    def train_ladder(*args, **kwargs):
        progress.warn("run directory in use; `resume=True` continues it")
        raise RunStoreError("run directory already holds a run; pass `resume=True` to continue it, "
                            "or another `out`, or `overrides=['optim.lr=0.1', 'seed=1']`")
    monkeypatch.setattr(ladder, "train_ladder", train_ladder)
    assert main(["train", "quickstart", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: run directory in use; --resume continues it",
                   "widthkit train: error: run directory already holds a run; pass --resume to continue it, "
                   "or another --out, or --set optim.lr=0.1 --set seed=1"]


def test_api_names_map_to_the_command_flags():
    p = argparse.ArgumentParser()
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--cpus-per-job", dest="num_cpus", type=float)
    p.add_argument("--redo", action="store_true")
    flags = {a.dest: a for a in p._actions if a.option_strings}
    assert _as_flags("`resume=False` refuses; `redo=True` recomputes", flags) == "--no-resume refuses; --redo recomputes"
    assert _as_flags("`num_cpus` must be positive, got `num_cpus=0`", flags) == \
        "--cpus-per-job must be positive, got --cpus-per-job 0"
    # not a parameter of this command, or a shell command: left as written
    assert _as_flags("`seed=3` or `ray start --head` or `redo=False`", flags) == \
        "`seed=3` or `ray start --head` or `redo=False`"


# ------------------------------------------------------------------------------------------- quiet mode
def test_quiet_is_a_context_that_nests():
    assert not hasattr(progress, "set_quiet")
    outer = progress.is_quiet()
    with progress.quiet(True):
        assert progress.is_quiet()
        with progress.quiet(False):
            assert not progress.is_quiet()
        assert progress.is_quiet()
    assert progress.is_quiet() == outer


def test_cli_quiet_does_not_outlive_the_call(capsys):
    before = progress.is_quiet()
    assert main(["-q", "train", "quickstrat"]) == 2
    assert progress.is_quiet() == before
    assert "did you mean 'quickstart'" in capsys.readouterr().err


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, check=True)


def test_widthkit_quiet_env_sets_the_default():
    code = "from widthkit import progress; print(progress.is_quiet())"
    assert _python(code, WIDTHKIT_QUIET="1").stdout.strip() == "True"
    assert _python(code, WIDTHKIT_QUIET="").stdout.strip() == "False"


# ------------------------------------------------------------------------------------------- matplotlib
def test_importing_widthkit_leaves_the_matplotlib_backend_alone(tmp_path):
    code = f"""
import importlib, pkgutil, sys
import matplotlib
matplotlib.use("svg")
def refuse(*args, **kwargs):
    raise AssertionError("matplotlib.use called")
matplotlib.use = refuse
import widthkit, widthkit.plots
for m in pkgutil.walk_packages(widthkit.__path__, "widthkit."):
    importlib.import_module(m.name)
fig, axes = widthkit.plots.figure(2, 1)
axes[0][0].plot([1, 2], [3, 4], color=widthkit.plots.width_colors([8, 16])[8])
widthkit.plots.save(fig, {str(tmp_path / 'f.png')!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules  # no pyplot state: no figure left open
"""
    _python(code)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------- shipped recipes
def test_find_recipe_by_name_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe("quickstart") == find_recipe("quickstart.toml") == SHIPPED / "quickstart.toml"
    text, raw = read_recipe_file("quickstart")
    assert raw["name"] == "quickstart" and text == (SHIPPED / "quickstart.toml").read_text()
    (tmp_path / "quickstart.toml").write_text('name = "mine"\n')  # an existing file wins
    assert find_recipe("quickstart.toml") == Path("quickstart.toml")
    assert (ROOT / "recipes").is_symlink() and os.readlink(ROOT / "recipes") == "widthkit/recipes"


def test_unknown_recipe_is_one_line_with_the_shipped_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("quikstart", "recipes/quickstart.toml"):  # a README path outside the checkout
        with pytest.raises(FileNotFoundError) as e:
            find_recipe(name)
        msg = str(e.value)
        assert isinstance(e.value, DataNotFoundError) and "\n" not in msg
        assert msg.startswith(f"recipe '{name}' not found (did you mean 'quickstart'?); ")
        assert ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml"))) in msg
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(RecipeError, match="^recipe file 'bad.toml' is not valid TOML"):
        read_recipe_file("bad.toml")


def test_transfer_bench_finds_the_shipped_suites(tmp_path, monkeypatch):
    from widthkit.commands.transfer_bench import load_suite, recipes_dir
    monkeypatch.chdir(tmp_path)
    assert recipes_dir() == SHIPPED
    assert all(t["source"].is_file() for t in load_suite("builtin") + load_suite("external"))


# ----------------------------------------------------------------------------------------------- version
def test_version_lives_in_one_place():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: widthkit.__version__"
    assert "version" not in (ROOT / "pyproject.toml").read_text()
    assert importlib.metadata.version("widthkit") == widthkit.__version__
