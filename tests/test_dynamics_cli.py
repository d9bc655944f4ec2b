"""The dynamics commands end to end on tiny settings of the shipped recipes (the CLI generated from the
analysis registry: ``widthkit NAME RECIPE [--set K=V] [--<option> VALUE ...] [--out DIR] [--json]``)."""
import json
from pathlib import Path

from widthkit.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_lr_phase_cli(tmp_path, capsys):
    rc = main(["lr-phase", str(RECIPES / "catapult-mlp.toml"), "--widths", "16", "--lrs", "0.5", "1.5", "20",
               "--steps", "15", "--set", "lr_phase.n_train=32", "--set", "lr_phase.lambda_steps=0",
               "--seeds", "0", "--tol", "0.3",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    runs = res["per_width"][0]["runs"]
    assert [r["lr_units"] for r in runs] == [0.5, 1.5, 20.0]
    assert runs[0]["phase"] == "lazy" and runs[-1]["phase"] == "divergent"
    assert "2/lambda" in res["convention"]
    assert {p.name for p in tmp_path.glob("*.png")} == {"phase_diagram.png", "loss_curves.png",
                                                       "sharpness_accuracy.png"}


def test_subspace_cli_projected(tmp_path, capsys):
    rc = main(["subspace", str(RECIPES / "subspace-digits.toml"), "--steps", "6", "--every", "3",
               "--set", "subspace.hessian_batch=64", "--set", "subspace.refresh=3", "--projected",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    sub = res["track"]
    assert sub["steps"] == [0, 3, 6] and sub["k"] == 10
    assert all(0 <= v <= 1 for v in sub["overlap_sq"])
    assert all(abs(a * a - b) < 1e-9 for a, b in zip(sub["overlap"], sub["overlap_sq"]))
    assert set(res["projected"]["train_loss"]) == {"sgd", "top-only", "bulk-only"}
    assert (tmp_path / "subspace.png").exists() and (tmp_path / "projected.png").exists()


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    rc = main(["lr-phase", str(RECIPES / "catapult-mlp.toml"), "--set", "lr_phase.lrss=[1.0]",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "did you mean 'lrs'" in err
    rc = main(["ntk-scaling", str(RECIPES / "ntk-scaling.toml"), "--params", "ntk", "mupp", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "did you mean 'mup'" in err
