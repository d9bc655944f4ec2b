"""`widthkit atlas` / `widthkit atlas-width` on a tiny ladder, and the neuron-vs-group probe."""
import json

import numpy as np
import pytest

import atlases
from widthkit.cli import main


def test_neuron_vs_group_finds_single_neuron_and_distributed_codes():
    g = np.random.default_rng(0)
    y = g.integers(0, 2, 600)
    x = g.normal(size=(600, 8)).astype(np.float32)
    x[:, 3] += 4 * y  # class in one neuron
    local = atlases.neuron_vs_group(x[:400], y[:400], x[400:], y[400:], k=3)
    assert local.best_neuron == 3 and local.best_neuron_acc > 0.95
    spread = g.normal(size=(600, 8)).astype(np.float32)
    spread += 4 * y[:, None] / np.sqrt(8)  # same signal strength, spread evenly over all 8 neurons
    dist = atlases.neuron_vs_group(spread[:400], y[:400], spread[400:], y[400:], k=3)
    assert dist.group_acc > 0.95 and dist.best_neuron_acc < dist.group_acc - 0.1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["-q", "train", "recipes/quickstart.toml", "--set", "model.widths=[8,32]", "--set",
                 "train.steps=60", "--set", "train.seeds=1", "--set", "train.eval_every=30",
                 "--set", "train.checkpoint_every=60", "--out", str(out)]) == 0
    return out


def test_atlas_command_on_a_ladder_member(tiny_run, tmp_path, capsys):
    rc = main(["atlas", str(tiny_run), "--widths", "32", "--seed", "0", "--grid", "3", "--min-count", "1",
               "--steps", "2", "--size", "8", "--max-vectors", "300", "--out", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)["atlases"][0]
    assert res["layer"] == "act1" and res["n_vectors"] == 300  # penultimate layer by default
    assert (tmp_path / res["folder"] / "atlas.png").exists() and (tmp_path / res["folder"] / "atlas.html").exists()
    assert main(["atlas", str(tiny_run), "--layer", "fc9"]) == 2
    assert "unknown layer 'fc9'" in capsys.readouterr().err
    assert main(["atlas", str(tiny_run), "--widths", "7"]) == 2
    assert "finished: [8, 32]" in capsys.readouterr().err


def test_atlas_layers_probes_and_neurons(tiny_run, tmp_path, capsys):
    rc = main(["atlas", str(tiny_run), "--widths", "32", "--layers", "act0,act1", "--grid", "3", "--min-count", "1",
               "--steps", "2", "--size", "16", "--max-vectors", "300", "--k", "3", "--examples", "200",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [a["layer"] for a in res["atlases"]] == ["act0", "act1"]
    page = (tmp_path / "layers.html").read_text()  # one page, one embedded viewer per layer
    assert page.count("<iframe") == 2 and page.count("<option") == 2 and "width 32, act0" in page
    for a in res["atlases"]:
        assert len(a["neurons"]) == 3 and len(a["neuron_labels"]) == 3
        assert (tmp_path / a["folder"] / "neurons.png").is_file() and a["labels_dominant"] >= 0
        viewer = (tmp_path / a["folder"] / "atlas.html").read_text()   # the neurons beside the cells
        panel = viewer.split('<div id="neurons">')[1].split("</div>")[0]
        assert panel.count("<img") == 3
        assert all(f">n{j}:{c}<" in panel for j, c in zip(a["neurons"], a["neuron_labels"]))
    p = res["probes"]
    assert p["widths"] == [8, 32] and p["layer"] == "act0" and p["examples"] == 200
    assert all(len(v) == 2 and len(v[0]) == 1 for v in p["per_seed"].values())  # [width][seed]
    assert (tmp_path / "neuron_vs_group.png").is_file() and (tmp_path / "neurons_vs_groups.png").is_file()


def test_atlas_width_command(tiny_run, tmp_path, capsys):
    rc = main(["atlas-width", str(tiny_run), "--grid", "3", "--steps", "2", "--size", "8", "--max-vectors", "300",
               "--k", "5", "--out", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["widths"] == [8, 32] and res["n_neurons"] == [8, 32] and res["k"] == 5
    assert all(0 <= a <= 1 for a in res["best_neuron_acc"] + res["group_acc"])
    assert all(g >= n - 0.05 for g, n in zip(res["group_acc"], res["best_neuron_acc"]))
    assert (tmp_path / "atlas_width.png").exists() and json.loads((tmp_path / "atlas_width.json").read_text())


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("vit_tiny_patch16_224", 32)])
def test_timm_checkpoint_loads_exactly_on_builtin_digits(tmp_path, capsys, name, size):
    """`atlas --timm NAME --checkpoint F --data digits` rebuilds the saved model exactly (same outputs)
    and feeds it 3-channel digits at the image size; a checkpoint of another model is one line."""
    import argparse

    import timm
    import torch

    from widthkit.commands.atlas_timm import load_timm
    kw = {"img_size": size} if name.startswith("vit") else {}
    torch.manual_seed(0)
    saved = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    torch.save(saved.state_dict(), tmp_path / "w.pt")
    args = argparse.Namespace(timm=name, checkpoint=str(tmp_path / "w.pt"), data="digits", image_size=None)
    model, x, y, _, _ = load_timm(args)
    assert x.shape[1:] == (3, size, size) and len(x) == len(y)
    assert torch.equal(x[:, 0], x[:, 2])  # gray digits made 3-channel
    with torch.no_grad():
        torch.testing.assert_close(model(x[:4]), saved(x[:4]))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    code = main(["atlas-timm", name, "--checkpoint", str(tmp_path / "other.pt"), "--data", "digits"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "checkpoint does not fit" in err and len(err.splitlines()) == 1
