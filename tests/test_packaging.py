"""The wheel: every module and shipped recipe, the right metadata, and recipes found by name once installed
into a fresh environment, from a directory outside the checkout (.ci/run also runs a study with it)."""
import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import widthkit

ROOT = Path(__file__).resolve().parents[1]


def _config() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_python_requires_matches_the_code():
    required = _config()["options"]["python_requires"]
    assert required == ">=3.11"
    uses_tomllib = [p for p in (ROOT / "widthkit").rglob("*.py") if re.search(r"^import tomllib", p.read_text(), re.M)]
    assert uses_tomllib  # tomllib is new in 3.11, so >=3.11 is the true floor (no tomli fallback)
    assert sys.version_info >= (3, 11)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the sources (no build/ or egg-info left in the checkout)."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for pkg in ("widthkit", "atlases"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True)
    (whl,) = dist.glob("widthkit-*.whl")
    return whl


def test_wheel_holds_every_module_and_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("widthkit", "atlases"):
        for p in (ROOT / pkg).rglob("*"):
            if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts:
                assert p.relative_to(ROOT).as_posix() in names
    assert len([n for n in names if n.startswith("widthkit/recipes/") and n.endswith(".toml")]) == \
        len(list((ROOT / "widthkit" / "recipes").glob("*.toml"))) > 0
    meta = zipfile.ZipFile(wheel).read(f"widthkit-{widthkit.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {widthkit.__version__}\n" in meta and "\nRequires-Python: >=3.11\n" in meta


def test_installed_wheel_finds_shipped_recipes_anywhere(wheel, tmp_path):
    """A fresh environment with only the wheel (its dependencies reached through a .pth, as in .ci/run)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--ignore-installed",
                    wheel], check=True, capture_output=True)  # not the widthkit seen through deps.pth or PYTHONPATH
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys, widthkit\n"
            "from widthkit.recipe import find_recipe\n"
            "from widthkit.commands.transfer_bench import load_suite\n"
            "assert widthkit.__file__.startswith(sys.prefix), widthkit.__file__\n"
            "assert find_recipe('quickstart').is_relative_to(sys.prefix)\n"
            "tasks = load_suite('builtin')\n"
            "assert tasks and all(t['source'].is_file() and t['source'].is_relative_to(sys.prefix) for t in tasks)\n")
    subprocess.run([python, "-c", code], cwd=empty, env=env, check=True)
    out = subprocess.run([venv / "bin" / "widthkit", "--version"], cwd=empty, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == f"widthkit {widthkit.__version__}"
    err = subprocess.run([venv / "bin" / "widthkit", "train", "quikstart"], cwd=empty, env=env,
                         capture_output=True, text=True)
    assert err.returncode == 2 and "did you mean 'quickstart'" in err.stderr and len(err.stderr.splitlines()) == 1
