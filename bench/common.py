"""Shared by the benchmark scripts: write one section of bench/RESULTS.md, describe the machine."""
from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def update_results(heading: str, section: str, path: Path = RESULTS) -> None:
    """Replace (or append) only the section under ``heading`` in bench/RESULTS.md."""
    text = path.read_text() if path.exists() else "# widthkit benchmarks\n"
    pat = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{heading}\n{section.strip()}\n\n"
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def publish(heading: str, text: str, write: bool = True) -> None:
    """Print a benchmark's section and, if ``write``, put it under ``heading`` in bench/RESULTS.md."""
    print("\n" + text)
    if write:
        update_results(heading, text)


def machine() -> str:
    """The device a benchmark ran on, in words."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")
