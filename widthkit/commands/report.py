"""``widthkit report RUN``: one self-contained HTML report of a run directory."""
from __future__ import annotations

NAME = "report"
HELP = "write one self-contained HTML report (results, analyses, plots, warnings) of a run directory"


def add_arguments(p) -> None:
    p.add_argument("run", help="run directory (from 'widthkit train' or 'widthkit study')")
    p.add_argument("--out", default=None, help="HTML file to write (default: RUN/report.html)")


def run(args) -> int:
    from ..report import write_report
    path = write_report(args.run, args.out)
    print(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
