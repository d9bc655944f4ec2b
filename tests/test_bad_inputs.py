"""Every bad input is one clean line (issue 17): exit 2, exactly one stderr line, no traceback, and nothing
left behind that blocks the corrected command.

The table calls the CLI in-process (``widthkit.cli.main``); one subprocess test proves that no traceback
reaches a terminal.  Recipes are tiny (a few steps), so the whole table runs in seconds.
"""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from widthkit.cli import main
from widthkit.ladder import train_ladder
from widthkit.rundir import LOCK, claim_run_dir

BASE = """name = "bad"
[model]
family = "mlp"
widths = [8, 16]
depth = 2
[data]
task = "digits"
batch_size = 32
[train]
steps = 4
seeds = 2
eval_every = 2
[optim]
lr = 0.05
"""


def _set(key: str, value: str, base: str = BASE) -> str:
    """``base`` with ``key = value`` (``section.key`` or a top-level key) replaced or added."""
    sec, _, k = key.rpartition(".")
    blocks = {"": []}
    cur = ""
    for ln in base.splitlines():
        if ln.startswith("["):
            cur = ln.strip("[]")
            blocks[cur] = []
        elif ln:
            blocks[cur].append(ln)
    blocks.setdefault(sec, [])
    blocks[sec] = [ln for ln in blocks[sec] if not ln.startswith(f"{k} =")] + [f"{k} = {value}"]
    return "\n".join(blocks[""] + [f"[{s}]\n" + "\n".join(v) for s, v in blocks.items() if s]) + "\n"


# (id, recipe bytes or text, extra CLI args, needle in the error line)
RECIPES = [
    # recipe files that are not UTF-8 text
    ("latin1", BASE.replace('"bad"', '"caf\xe9"').encode("latin-1"), [], "not UTF-8"),
    ("utf16", BASE.encode("utf-16"), [], "not UTF-8"),
    ("binary", bytes(range(256)) * 4, [], "not UTF-8"),
    ("png-as-recipe", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", [], "not UTF-8"),
    ("gzip-as-recipe", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff", [], "not UTF-8"),
    ("nul-byte", BASE.replace("[model]", "[model]\x00"), [], "not valid TOML"),
    # a list where a scalar belongs
    ("list-name", _set("name", '["a", "b"]'), [], "recipe key 'name' must be a string"),
    ("list-seed", _set("seed", "[0, 1]"), [], "recipe key 'seed' must be an integer"),
    ("nested-family", _set("model.family", '[["mlp"]]'), [], "'model.family' must be a string"),
    ("nested-depth", _set("model.depth", "[[2]]"), [], "depth"),
    ("nested-task", _set("data.task", '[["digits"]]'), [], "data.task"),
    ("nested-batch", _set("data.batch_size", "[[32]]"), [], "'data.batch_size' must be"),
    ("nested-online", _set("data.online", "[[true]]"), [], "'data.online' must be"),
    ("nested-steps", _set("train.steps", "[[4]]"), [], "'train.steps' must be"),
    ("nested-loss", _set("train.loss", '[["xent"]]'), [], "'train.loss' must be"),
    ("nested-device", _set("train.device", '[["cpu"]]'), [], "'train.device' must be"),
    ("nested-eval", _set("train.eval_every", "[[2]]"), [], "'train.eval_every' must be"),
    ("nested-lr", _set("optim.lr", "[[0.1]]"), [], "'optim.lr' must be"),
    ("nested-optim", _set("optim.name", '[["sgd"]]'), [], "'optim.name' must be"),
    ("nested-kind", _set("param.kind", '[["mup"]]'), [], "'param.kind' must be"),
    ("nested-widths", _set("model.widths", "[[8], [16]]"), [], "'model.widths' must be"),
    ("nested-seeds", _set("train.seeds", "[[0], [1]]"), [], "'train.seeds' must be"),
    ("table-as-seed", _set("seed", "{a = 1}"), [], "recipe key 'seed' must be"),
    ("list-section", "optim = [1, 2]\n" + BASE.replace("[optim]\nlr = 0.05\n", ""), [], "'optim' must be a table"),
    # names
    ("name-dotdot", _set("name", '"../.."'), [], "recipe key 'name'"),
    ("name-slash", _set("name", '"a/b"'), [], "path separator"),
    ("name-backslash", _set("name", '"a\\\\b"'), [], "path separator"),
    ("name-dot", _set("name", '"."'), [], "is '.' or '..'"),
    ("name-control", _set("name", '"a\\u0007b"'), [], "control character"),
    ("name-newline", _set("name", '"a\\nb"'), [], "control character"),
    ("name-empty", _set("name", '""'), [], "is empty"),
    ("name-dash", _set("name", '"-rf"'), [], "starts with"),
    ("name-too-long", _set("name", '"' + "x" * 300 + '"'), [], "longer than 100"),
    ("name-101", _set("name", '"' + "y" * 101 + '"'), [], "longer than 100"),
    # values caught only inside a job before
    ("device-gpu", _set("train.device", '"gpu"'), [], "'train.device' is 'gpu'"),
    ("device-tpu", _set("train.device", '"tpu:0"'), [], "'train.device' is 'tpu:0'"),
    ("device-cudax", _set("train.device", '"cuda:x"'), [], "'train.device'"),
    ("device-empty", _set("train.device", '""'), [], "'train.device'"),
    ("output-mult-negative", _set("param.output_mult", "-1.0"), [], "'param.output_mult' must be"),
    ("output-mult-zero", _set("param.output_mult", "0.0"), [], "'param.output_mult' must be"),
    ("gain-negative", _set("param.gain", "-2.0"), [], "'param.gain' must be"),
    ("strategy-flag", BASE, ["--strategy", "fastest"], "--strategy is 'fastest'"),
    ("strategy-chunk0", BASE, ["--strategy", "chunk:0"], "--strategy is 'chunk:0'"),
    ("strategy-recipe", _set("train.strategy", '"turbo"'), [], "'train.strategy' is 'turbo'"),
    ("strategy-chunk-neg", _set("train.strategy", '"chunk:-2"'), [], "'train.strategy'"),
    ("width-too-large", _set("model.widths", "[8, 50000000]"), [], "width 50000000 needs at least"),
    ("eval-batch-zero", _set("train.eval_batch_size", "0"), [], "'train.eval_batch_size' must be"),
    ("eps-zero", _set("optim.eps", "0.0"), [], "'optim.eps' must be"),
    ("betas-out-of-range", _set("optim.betas", "[1.5, 0.9]"), [], "'optim.betas'"),
    ("lr-negative", _set("optim.lr", "-0.1"), [], "'optim.lr' must be"),
    ("lr-nan", _set("optim.lr", "nan"), [], "'optim.lr' must be"),
    ("lr-inf", _set("optim.lr", "inf"), [], "'optim.lr' must be"),
    ("momentum-negative", _set("optim.momentum", "-0.9"), [], "'optim.momentum' must be"),
    ("divergence-factor-negative", _set("train.divergence_factor", "-1.0"), [], "'train.divergence_factor'"),
    # accepted before with a surprising meaning
    ("empty-recipe", "", [], "the recipe is empty"),
    ("blank-recipe", "\n\n   \n", [], "the recipe is empty"),
    ("comment-only", "# nothing here\n", [], "the recipe is empty"),
    ("steps-and-epochs", _set("train.epochs", "2.0"), [], "'train.steps' and 'train.epochs' are both set"),
    ("epochs-negative", BASE.replace("steps = 4", "epochs = -1.0"), [], "'train.epochs' must be"),
    ("steps-negative", _set("train.steps", "-5"), [], "'train.steps' must be"),
    ("steps-zero", _set("train.steps", "0"), [], "'train.steps' is 0"),
    ("one-class", _set("data.task", '"digits:3"'), [], "has 1 class"),
    ("warmup-too-long", _set("optim.warmup_steps", "4"), [], "'optim.warmup_steps' is 4"),
    ("warmup-way-too-long", _set("optim.warmup_steps", "1000"), [], "'optim.warmup_steps' is 1000"),
    ("seeds-per-job-zero", BASE, ["--seeds-per-job", "0"], "--seeds-per-job"),
    ("seeds-per-job-negative", BASE, ["--seeds-per-job", "-3"], "--seeds-per-job"),
    ("seeds-zero", _set("train.seeds", "0"), [], "'train.seeds' is 0"),
    ("widths-empty", _set("model.widths", "[]"), [], "'model.widths' is empty"),
    ("widths-repeated", _set("model.widths", "[8, 8]"), [], "repeated widths"),
    ("sweep-empty", _set("optim.lr", "[]"), [], "empty sweep list"),
    ("bad-toml", BASE + "lr = = 3\n", [], "not valid TOML"),
    ("unknown-section", BASE.replace("[optim]", "[optimm]"), [], "unknown recipe section or key 'optimm'"),
    ("unknown-key", _set("train.stepz", "3"), [], "unknown recipe key 'train.stepz'"),
    ("set-not-key-value", BASE, ["--set", "optim.lr"], "is not of the form"),
    ("ray-flag-local", BASE, ["--max-retries", "2"], "only apply to --executor ray"),
]


def _no_lock_left(root: Path) -> None:
    assert not list(root.rglob(LOCK)), "a lock file was left behind"


def _unblocked(out: Path) -> None:
    """A corrected command can use ``out``: it is claimable and holds no finished job."""
    _no_lock_left(out.parent)
    if out.exists():
        claim_run_dir(out)
        index = out / "index.json"
        if index.exists():
            assert not any(j["status"] == "done" for j in json.loads(index.read_text())["jobs"].values())


def _cli(argv: list[str]) -> int:
    """``widthkit ARGV`` in-process: its exit code (argparse exits through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _one_line(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", ["train"])
@pytest.mark.parametrize("case,text,args,needle", RECIPES, ids=[c[0] for c in RECIPES])
def test_bad_recipe(tmp_path, capsys, command, case, text, args, needle):
    recipe = tmp_path / "r.toml"
    (recipe.write_bytes if isinstance(text, bytes) else recipe.write_text)(text)
    out = tmp_path / "run"
    line = _one_line(capsys, _cli(["-q", command, str(recipe), "--out", str(out), *args]))
    assert needle in line, line
    _unblocked(out)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    train_ladder(BASE, out)
    return out


OPTIONS = [  # bad analysis options on a finished run
    ("ensemble-bias", ["--subsets", "0"], "--subsets must be"),
    ("ensemble-bias", ["--subsets", "-4"], "--subsets must be"),
    ("consistency", ["--splits", "0"], "--splits must be"),
    ("atlas", ["--icons", "exampels"], "invalid choice: 'exampels' (choose from 'optimize', 'examples')"),
    ("ensemble-bias", ["--step", "3"], "step 3 has no stored test outputs"),
    ("ensemble-bias", ["--subsets", "many"], "invalid int value"),
    ("atlas", ["--steps", "-3"], "--steps must be"),
    ("atlas", ["--grid", "0"], "--grid must be"),
    ("atlas", ["--size", "0"], "--size must be"),
    ("atlas", ["--max-vectors", "-1"], "--max-vectors must be"),
    ("atlas", ["--keep", "2"], "--keep must be"),
    ("atlas", ["--keep", "0"], "--keep must be"),
    ("atlas", ["--widths", "12"], "not finished"),
    ("atlas", ["--seed", "9"], "not a member seed"),
    ("atlas", ["--layer", "nolayer"], "nolayer"),
    ("transfer", ["--val-frac", "1.5"], "--val-frac must be"),
    ("transfer", ["--draws", "0"], "--draws must be"),
    ("transfer", ["--n-info", "0"], "--n-info must be"),
]


@pytest.mark.parametrize("command,args,needle", OPTIONS, ids=[f"{c}{'_'.join(a)}" for c, a, _ in OPTIONS])
def test_bad_analysis_option(run_dir, tmp_path, capsys, command, args, needle):
    line = _one_line(capsys, _cli(["-q", command, str(run_dir), "--out", str(tmp_path / "o"), *args]))
    assert needle in line, line
    _no_lock_left(run_dir)


def _index(doc) -> str:
    return doc if isinstance(doc, str) else json.dumps(doc)


def _damaged(good: dict) -> list[tuple[str, object, str]]:
    job = next(iter(good["jobs"]))
    return [
        ("list", [], "not a widthkit run index"),
        ("not-json", "{points", "is corrupt"),
        ("no-points", {k: v for k, v in good.items() if k != "points"}, "'points' is not a non-empty list"),
        ("points-dict", {**good, "points": {"a": 1}}, "'points' is not a non-empty list"),
        ("jobs-list", {**good, "jobs": []}, "'jobs' is not a mapping"),
        ("job-no-width", {**good, "jobs": {job: {k: v for k, v in good["jobs"][job].items() if k != "width"}}},
         ".width is missing"),
        ("job-width-str", {**good, "jobs": {job: {**good["jobs"][job], "width": "8"}}}, ".width is missing or not int"),
        ("job-point-far", {**good, "jobs": {job: {**good["jobs"][job], "point": 7}}}, "is not a grid point"),
        ("shard-escapes", {**good, "jobs": {job: {**good["jobs"][job], "shard": "../../etc/passwd"}}},
         "is not a file under shards/"),
        ("format-version-str", {**good, "format_version": "x"}, "newer widthkit"),
    ]


@pytest.mark.parametrize("i", range(10))
@pytest.mark.parametrize("command", ["report", "ensemble-bias"])
def test_damaged_index(run_dir, tmp_path, capsys, i, command):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    good = json.loads((run / "index.json").read_text())
    case, doc, needle = _damaged(good)[i]
    (run / "index.json").write_text(_index(doc))
    line = _one_line(capsys, _cli(["-q", command, str(run)]))
    assert needle in line, (case, line)


OUTS = [  # --out that cannot hold a run
    ("file", lambda t: t / "f.txt", "is a file"),
    ("under-file", lambda t: t / "f.txt" / "run", "lies under the file"),
    ("deep-under-file", lambda t: t / "f.txt" / "a" / "b", "lies under the file"),
    ("name-too-long", lambda t: t / ("n" * 300), "too long for the file system"),
    ("user-folder", lambda t: t / "docs", "is not empty and not a widthkit run (it holds thesis.tex)"),
    ("foreign-index", lambda t: t / "other", "not a widthkit run index"),
]


@pytest.mark.parametrize("command", ["train", "study"])
@pytest.mark.parametrize("case,where,needle", OUTS, ids=[c[0] for c in OUTS])
def test_bad_out(tmp_path, capsys, command, case, where, needle):
    (tmp_path / "f.txt").write_text("a file")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.json").write_text('{"project": "someone else"}')
    recipe = tmp_path / "r.toml"
    recipe.write_text(BASE)
    line = _one_line(capsys, _cli(["-q", command, str(recipe), "--out", str(where(tmp_path))]))
    assert needle in line, line
    assert (tmp_path / "f.txt").read_text() == "a file" and (tmp_path / "docs" / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["thesis.tex"]


def test_disk_full_during_a_checkpoint_says_disk_full(tmp_path, capsys, monkeypatch):
    """A full disk while a checkpoint is written: one line saying so; the corrected rerun resumes."""
    real = Path.write_bytes

    def full(self, data):
        if ".pt" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", full)
    recipe = tmp_path / "r.toml"
    recipe.write_text(_set("train.checkpoint_every", "2"))
    line = _one_line(capsys, _cli(["-q", "train", str(recipe), "--out", str(tmp_path / "run")]))
    assert "disk full while writing" in line and "--resume" in line
    assert not list((tmp_path / "run").rglob(".*.tmp")) and not list((tmp_path / "run").rglob(".*.pt"))
    monkeypatch.setattr(Path, "write_bytes", real)
    assert main(["-q", "train", str(recipe), "--out", str(tmp_path / "run"), "--resume"]) == 0


def test_corrected_recipe_is_not_blocked(tmp_path, capsys):
    """A job that fails on the recipe leaves a run with no finished job; the corrected recipe just runs."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(_set("data.task", '"digits?bogus=1"'))
    out = tmp_path / "run"
    line = _one_line(capsys, _cli(["-q", "train", str(recipe), "--out", str(out)]))
    assert "bogus" in line
    recipe.write_text(BASE)
    assert main(["-q", "train", str(recipe), "--out", str(out)]) == 0


def test_batch_size_above_the_data_is_clamped_said_and_recorded(tmp_path):
    with pytest.warns(UserWarning, match="'data.batch_size' is 100000, above the 1347 training samples"):
        run = train_ladder(_set("data.batch_size", "100000"), tmp_path / "run")
    assert {j["strategy"]["batch_size"] for j in run.index["jobs"].values()} == {1347}


def test_no_traceback_reaches_the_terminal(tmp_path):
    """A real process: bad recipe and bad --out each give one line on stderr and exit 2."""
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(BASE.replace('"bad"', '"caf\xe9"').encode("latin-1"))
    (tmp_path / "f").write_text("x")
    for args in ([str(recipe)], [str(tmp_path / "ok.toml"), "--out", str(tmp_path / "f")]):
        (tmp_path / "ok.toml").write_text(BASE)
        p = subprocess.run([sys.executable, "-m", "widthkit.cli", "train", *args], capture_output=True, text=True,
                           cwd=tmp_path)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_read_only_run_directory_still_reads(run_dir, tmp_path, capsys, monkeypatch):
    """Reading commands work on a run directory that refuses writes (a read-only mount, another user's
    run); writing into it is one line that says where to write instead."""
    import os
    import tempfile
    run = tmp_path / "ro"
    shutil.copytree(run_dir, run)
    real_mkstemp, real_mkdir = tempfile.mkstemp, Path.mkdir

    def refuse(path):
        if Path(path).resolve().is_relative_to(run.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, dir=None, **k: refuse(dir) or real_mkstemp(*a, dir=dir, **k))
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refuse(self) or real_mkdir(self, *a, **k))
    assert _cli(["-q", "report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 0
    assert _cli(["-q", "ensemble-bias", str(run), "--out", str(tmp_path / "eb")]) == 0
    capsys.readouterr()
    line = _one_line(capsys, _cli(["-q", "report", str(run)]))
    assert "read-only" in line and "pass --out" in line


@pytest.mark.parametrize("damage", ["not-json", "job-no-width"])
def test_damaged_index_advice_works(run_dir, tmp_path, capsys, damage):
    """The advice of a damaged index's error (`widthkit train RECIPE --out RUN --resume`) rebuilds it from
    the shards without training anything again."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    good = json.loads((run / "index.json").read_text())
    _, doc, _ = next(c for c in _damaged(good) if c[0] == damage)
    (run / "index.json").write_text(_index(doc))
    line = _one_line(capsys, _cli(["-q", "report", str(run)]))
    assert "--resume` to rebuild it from the shards" in line
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "shards").glob("*.h5")}
    recipe = tmp_path / "r.toml"
    recipe.write_text(BASE)
    assert _cli(["-q", "train", str(recipe), "--out", str(run), "--resume"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run / "shards").glob("*.h5")} == stamps
    assert _cli(["-q", "report", str(run)]) == 0
