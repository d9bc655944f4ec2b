"""`widthkit study` / `widthkit report` on tiny ladders: every analysis, the HTML page in chromium, warnings."""
import json
import re
from pathlib import Path

import pytest

import widthkit
from widthkit.analyses import get_analysis
from widthkit.cli import main
from widthkit.report import write_report
from widthkit.store import open_run

try:
    from browser import chromium, screenshot_array
except ImportError:  # tests/ imported as a package
    from tests.browser import chromium, screenshot_array

TINY = """
name = "tiny-study"
seed = 0
[model]
family = "mlp"
widths = [8, 32]
depth = 2
activation = "relu"
[param]
kind = "mup"
base_width = 8
[data]
task = "digits"
batch_size = 64
[train]
loss = "xent"
steps = 60
seeds = 2
eval_every = 30
checkpoint_every = 60
[optim]
name = "sgd"
lr = 0.1
momentum = 0.9
[transfer]
target = "digits:5-9"
[atlas]
max_vectors = 300
grid = 3
min_count = 1
size = 8
steps = 2
[study]
run = ["ntk-scaling"]
[ntk_scaling]
n_train = 16
n_probe = 4
steps = 5
"""

# SP + MSE at a large lr: width 128 diverges, width 8 and 16 do not; the transfer target's inputs do
# not match the digits (a user error that must not stop the study)
BAD = """
name = "bad-study"
[model]
family = "mlp"
widths = [8, 16, 128]
depth = 2
[param]
kind = "sp"
[data]
task = "digits"
[train]
loss = "mse"
steps = 60
seeds = 2
eval_every = 30
[optim]
name = "sgd"
lr = 0.5
[transfer]
target = "teacher?classes=3"
[study]
skip = ["atlas"]
"""


def _stamps(run: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (run / "shards").glob("*.h5")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    recipe = d / "tiny.toml"
    recipe.write_text(TINY)
    res = widthkit.study(recipe, d / "run", quiet=True)
    return recipe, d / "run", res


def test_study_trains_and_runs_every_analysis(tiny):
    recipe, run, res = tiny
    assert res.jobs == 2 and res.jobs_trained == 2 and res.widths == [8, 32] and not res.warnings
    status = {a.name: a.status for a in res.analyses if a.status != "skipped"}
    assert status == {"ensemble-bias": "done", "transfer": "done", "atlas": "done", "ntk-scaling": "done"}
    assert json.loads((run / "study.json").read_text()) == res.to_dict()  # the saved result is the returned one
    for a in res.analyses:
        assert a.status == "skipped" or (a.files and all((run / f).is_file() for f in a.files) and a.summary)
    eb = get_analysis("ensemble-bias").load(run / "ensemble_bias")
    assert eb.widths == [8, 32]
    assert res.analyses[0].summary == get_analysis("ensemble-bias").blocks(eb, run / "ensemble_bias")[0].lines
    tr = json.loads((run / "transfer/transfer.json").read_text())
    assert all(p["target_acc_mean"] > 0.5 for p in tr["per_width"])  # 5 target classes: chance is 0.2
    atl = json.loads((run / "atlas/atlas.json").read_text())["atlases"]
    assert [a["width"] for a in atl] == [8, 32]  # the narrowest and widest member, penultimate layer, tiny settings
    for a in atl:
        assert a["layer"] == "act1" and a["n_vectors"] == 300 and a["grid"] == 3 and a["n_cells"] >= 1
        assert (run / "atlas" / a["folder"] / "atlas.png").is_file()
    ntk = json.loads((run / "ntk_scaling/ntk_scaling.json").read_text())
    assert ntk["widths"] == [8, 32] and ntk["steps"] == 5
    assert Path(res.report) == run / "report.html" and res.report and (run / "report.html").is_file()


def test_report_is_self_contained_and_renders_in_chromium(tiny, tmp_path):
    _, run, _ = tiny
    page = write_report(run, tmp_path / "r.html")  # elsewhere than the run: links must still resolve
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "<link" not in text and "<script" not in text
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', text)
    assert len(uris) == text.count("<img") and len(set(uris)) == len(uris)  # every image inlined, none twice
    assert "@media print" in text
    # readings are computed from the numbers: the variance exponent and the transfer accuracies
    eb = json.loads((run / "ensemble_bias/ensemble_bias.json").read_text())
    assert f"N^{eb['variance_fit']['slope']:.2f}" in text
    tr = json.loads((run / "transfer/transfer.json").read_text())
    assert f"{100 * tr['per_width'][-1]['target_acc_mean']:.1f}% at N=32" in text
    viewers = re.findall(r'href="([^"#]+atlas\.html)"', text)
    assert len(viewers) >= 2 and all((page.parent / v).resolve().is_file() for v in viewers)
    with chromium(1100, 900) as driver:
        driver.get(page.as_uri())
        ids = driver.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
        for sid in ("summary", "recipe", "versions", "results", "analysis-ensemble-bias", "analysis-transfer",
                    "analysis-atlas", "analysis-ntk-scaling", "warnings"):
            assert sid in ids
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => t.tBodies[0].rows.length)")
        assert len(rows) >= 6 and min(rows) >= 1
        results = driver.find_element("id", "results").text
        assert "3,466" in results and "0/2" in results  # width-32 params; no member diverged
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth)")
        assert len(widths) >= 8 and all(w > 0 for w in widths)
        assert "none" in driver.find_element("id", "warnings").text
        shot = screenshot_array(driver)
        assert shot.shape[0] > 100 and shot.reshape(-1, 3).std(0).max() > 10  # not a blank page


def test_rerun_trains_nothing_and_json_parses(tiny, capsys):
    recipe, run, first = tiny
    before = _stamps(run)
    assert main(["study", str(recipe), "--out", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert res["jobs_trained"] == 0 and _stamps(run) == before
    assert {a["name"]: a["status"] for a in res["analyses"] if a["status"] != "skipped"} == \
        {a.name: "kept" for a in first.analyses if a.status != "skipped"}
    assert [a["summary"] for a in res["analyses"]] == [a.summary for a in first.analyses]


def test_report_warns_about_divergence_unfinished_widths_and_failed_analyses(tmp_path):
    recipe, run = tmp_path / "bad.toml", tmp_path / "run"
    recipe.write_text(BAD)
    widthkit.train_ladder(recipe, run)
    page = write_report(run)  # a run with only training done: results, no analyses
    text = page.read_text()
    assert 'id="results"' in text and 'id="analysis-' not in text
    assert "width 128: 2 of 2 members diverged" in text
    res = widthkit.study(recipe, run, quiet=True)
    assert res.jobs_trained == 0
    st = {a.name: a for a in res.analyses}
    assert st["ensemble-bias"].status == "done" and st["atlas"].status == "skipped"
    assert st["transfer"].status == "failed" and "inputs of shape (32,)" in st["transfer"].message
    assert any(w.startswith("transfer failed") for w in res.warnings)
    assert json.loads((run / "ensemble_bias/ensemble_bias.json").read_text())["skipped_widths"] == [128]
    # an interrupted width: the index still lists its job as pending and its shard is missing
    index = json.loads((run / "index.json").read_text())
    job = next(k for k, j in index["jobs"].items() if j["width"] == 16)
    index["jobs"][job]["status"] = "pending"
    (run / "index.json").write_text(json.dumps(index))
    (run / index["jobs"][job]["shard"]).unlink()
    assert open_run(run).unfinished == [16]
    text = write_report(run).read_text()
    warn = text[text.index('id="warnings"'):]
    assert "width 16 is unfinished (0 of 1 jobs done)" in warn
    assert "width 128: 2 of 2 members diverged" in warn
    assert "transfer failed in the last study" in warn and "inputs of shape (32,)" in warn
    results = text[text.index('id="results"'):text.index('id="analysis-')]
    assert "<td>8</td>" in results and "<td>128</td>" in results and "<td>16</td>" not in results


def test_user_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "typo.toml"
    bad.write_text(TINY.replace('run = ["ntk-scaling"]', 'skip = ["atlass"]'))
    assert main(["study", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown analysis 'atlass' (did you mean 'atlas'?)" in err
    assert not (tmp_path / "r").exists()  # nothing trained
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err
