"""widthkit.malloc: with freed memory kept in the process, a step's big buffers stop faulting in fresh pages."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import widthkit.trainer as trainer
from widthkit.ladder import build_member, load_recipe_task
from widthkit.recipe import load_recipe

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# Page faults per training step of 4 Myrtle-5 members of width 32 on 8x8 digits (NHWC, single-threaded), after
# four warm-up steps.  With glibc's default malloc every step faults its feature maps and gradients in afresh.
FAULTS = """
import resource, torch, widthkit.malloc as m
from widthkit.engine import Ensemble
from widthkit.ladder import build_member, load_recipe_task
from widthkit.recipe import load_recipe
torch.set_num_threads(1)
print(m.keep_freed_memory())
r = load_recipe("quickstart", overrides=["model.family=cnn", "model.depth=5", "data.batch_size=64"])
task = load_recipe_task(r)
ens = Ensemble([build_member(r, 32, s, task)[0] for s in range(4)], {}, r.optim, "xent", channels_last=True)
x, y = task.x_train[:256].reshape(4, 64, *task.x_train.shape[1:]), task.y_train[:256].reshape(4, 64)
for rep in range(14):
    if rep == 4:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ens.step(x, y, 1e-3)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


def _faults(env: dict) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", float(out[1])


def test_kept_memory_is_reused_without_page_faults_and_system_opts_out():
    kept, faults = _faults({"WIDTHKIT_MALLOC": ""})
    if not kept:
        pytest.skip("this libc has no mallopt")
    system_kept, system_faults = _faults({"WIDTHKIT_MALLOC": "system"})
    assert not system_kept and system_faults > 1_000  # glibc's default: megabytes faulted in again every step
    assert faults < system_faults / 20  # kept: the same heap pages (a few dozen stray faults in some runs)


def test_the_trainer_keeps_freed_memory_on_cpu_and_records_it():
    recipe = load_recipe("quickstart", overrides=["model.widths=[16]", "train.seeds=2", "train.steps=4",
                                                  "train.eval_every=4"])
    _, record, _ = trainer.train_members(recipe, 16, [0, 1], load_recipe_task(recipe), build_member=build_member)
    assert record["malloc"] == "kept"
