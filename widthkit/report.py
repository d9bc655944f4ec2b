"""One self-contained HTML report of a run directory.

``write_report(run)`` reads what is in the run directory -- the index and shards (recipe, versions,
per-width results) and, for every registered analysis, the result it saved in its folder of each grid
point, loaded as its typed result (``Result.load``) and rendered through the analysis's own ``blocks``
(the same tables and readings the terminal shows) -- and writes one HTML file: every plot inlined once as
a base64 PNG with its one-line reading, no external resources (readable offline, printable).  Only the
figures the analyses' blocks list are inlined, and only PNG files inside the run directory (see
``_Html.check_figures``), so a planted symbolic link cannot mail out other files.
Interactive atlas viewers are linked relatively, not inlined.  Warnings list diverged members, unfinished
widths, unreadable or old-schema results, and the analyses that failed in the last ``widthkit study``.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import os
import tempfile
import urllib.parse
from pathlib import Path

import numpy as np

from . import __version__, fmt
from .analyses.base import Block, Figure, Table, get_analysis, list_analyses
from .atomic import atomic_write_text
from .errors import WidthkitError
from .plots import figure, save, width_colors
from .results import ResultFileError
from .store import open_run, point_folder
from .table import ladder_rows


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def analysis_blocks(view) -> tuple[list[Block], list[str]]:
    """The blocks of every analysis saved in one point's folder, and a warning per unreadable result."""
    blocks, warnings = [], []
    root = point_folder(view)
    for name in list_analyses():
        a = get_analysis(name)
        folder = root / a.folder
        if not a.result_path(folder).exists():
            continue
        try:
            res = a.load(folder)
        except ResultFileError as e:
            warnings.append(f"{name}: {e}")
            continue
        for i, b in enumerate(a.blocks(res, folder)):
            b.id = f"analysis-{name}" + (f"-{i}" if i else "")
            blocks.append(b)
    return blocks, warnings


# ----------------------------------------------------------------------------------- results
def _training_figure(view, rows) -> tuple[bytes, str]:
    """Test loss (and accuracy) over training per width, mean over the members that did not diverge."""
    colors = width_colors([r["width"] for r in rows])
    curves = {}
    for r in rows:
        m, div = view.metrics(r["width"]), view.diverged(r["width"])
        keep = ~np.asarray(div, bool)
        if keep.any():
            curves[r["width"]] = (m["step"], np.nanmean(m["test_loss"][keep], 0), np.nanmean(m["test_acc"][keep], 0))
    has_acc = any(np.isfinite(c[2]).any() for c in curves.values())
    fig, axes = figure(2 if has_acc else 1, 1, size=(4.4, 3.2))
    for w, (s, loss, acc) in curves.items():
        axes[0][0].plot(s, loss, "o-", ms=2, color=colors[w], label=f"N={w}")
        if has_acc:
            axes[0][1].plot(s, acc, "o-", ms=2, color=colors[w])
    axes[0][0].set_yscale("log")
    axes[0][0].set(xlabel="step", ylabel=f"test loss ({view.loss_name})", title="mean over members")
    if curves:
        axes[0][0].legend(fontsize=7)
    if has_acc:
        axes[0][1].set(xlabel="step", ylabel="test accuracy")
    with tempfile.TemporaryDirectory() as tmp:
        data = save(fig, Path(tmp) / "training.png").read_bytes()
    W = sorted(curves)
    if len(W) < 2:
        return data, "test loss over training" + (f" at width {W[0]}" if W else " (no member finished)")
    T = min(len(curves[w][1]) for w in W)
    L = np.array([curves[w][1][:T] for w in W])
    mono = int(np.sum(np.all(np.diff(L, axis=0) <= 0, axis=0)))
    return data, (f"test loss falls monotonically with width at {mono} of {T} evaluation steps; at the end "
                  f"{fmt.num(L[0, -1])} at N={W[0]} vs {fmt.num(L[-1, -1])} at N={W[-1]}")


def run_warnings(view, index: dict | None = None) -> list[str]:
    """What a reader must know about one point's training: unfinished widths (with their job counts)
    and diverged members.  Shared by the report and ``widthkit study``'s summary."""
    index = view.index if index is None else index
    point = view.points.index(view.point_key)
    out = []
    for w in view.unfinished:
        jobs = [j for j in index["jobs"].values() if j["width"] == w and j["point"] == point]
        done = sum(j.get("status") == "done" for j in jobs)
        out.append(f"width {w} is unfinished ({done} of {len(jobs)} jobs done); finish it with "
                   f"`widthkit study RECIPE --out {view.path}` (or `widthkit train ... --resume`)")
    for w in view.widths:
        try:
            div = view.diverged(w)
        except WidthkitError:
            continue  # an unreadable shard: the results block says so
        if div.any():
            why = ", ".join(sorted({r for r in view.diverged_reason(w) if r})) or "NaN/inf loss"
            out.append(f"width {w}: {int(div.sum())} of {len(div)} members diverged ({why}); "
                       "analyses leave them out")
    return out


def _results_block(view, job_seconds: dict, suffix: str) -> tuple[Block, list[str]]:
    b = Block("results" + suffix, "Results per width" + (f" [{view.point_key}]" if view.point_key else ""))
    warnings = []
    if not view.widths:
        b.lines.append("no width has finished training yet")
        return b, warnings
    for w in view.widths:
        try:
            view.diverged(w)
        except WidthkitError as e:
            warnings.append(f"width {w} is left out of the results: {e}")
    rows = ladder_rows(view)  # the readable widths
    if not rows:
        b.lines.append("no finished width can be read")
        return b, warnings
    b.tables.append(Table("Final test metrics over seeds (diverged members left out)",
                          ["width", "params", "test loss (mean ± sd)", "test acc (mean ± sd)", "diverged",
                           "train time (s)", "strategy"],
                          [[str(r["width"]), f"{r['params']:,}", fmt.mean_sd(r["test_loss"]), fmt.mean_sd(r["test_acc"]),
                            f"{r['diverged']}/{r['members']}", fmt.num(job_seconds.get(r["width"])), r["strategy"]]
                           for r in rows]))
    acc = [np.nanmean(r["test_acc"]) if len(r["test_acc"]) else np.nan for r in rows]
    loss = [np.nanmean(r["test_loss"]) if len(r["test_loss"]) else np.nan for r in rows]
    if np.isfinite(acc).any():
        best = int(np.nanargmax(acc))
        b.lines.append(f"test accuracy {fmt.pct(acc[0])} at N={rows[0]['width']} and {fmt.pct(acc[-1])} at "
                       f"N={rows[-1]['width']}; best width {rows[best]['width']} ({fmt.pct(acc[best])})")
    elif np.isfinite(loss).any():
        best = int(np.nanargmin(loss))
        b.lines.append(f"test loss {fmt.num(loss[0])} at N={rows[0]['width']} and {fmt.num(loss[-1])} at N={rows[-1]['width']}; "
                       f"best width {rows[best]['width']}")
    b.figures.append(Figure(*_training_figure(view, rows)))
    return b, warnings


# ----------------------------------------------------------------------------------- HTML
CSS = """
:root{--fg:#1b1f24;--mute:#57606a;--line:#d0d7de;--bg2:#f6f8fa;--warn:#9a4d00}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0;background:#fff}
main{max-width:1120px;margin:0 auto;padding:1.2rem 2rem 4rem}
h1{font-size:1.7rem;margin:.4rem 0 .2rem}
h2{font-size:1.3rem;border-bottom:1px solid var(--line);padding-bottom:.25rem;margin-top:2.4rem}
h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
.sub{color:var(--mute);margin:0 0 1rem}
nav{position:sticky;top:0;background:#fffffff0;border-bottom:1px solid var(--line);padding:.45rem 2rem;
    font-size:.9rem;z-index:2}
nav a{margin-right:1rem;color:#0b5cad;text-decoration:none}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1.2rem;margin:.6rem 0}
dl.facts dt{color:var(--mute)} dl.facts dd{margin:0}
ul.lines li{margin:.15rem 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.9rem;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;color:var(--mute);padding:.2rem 0;font-size:.88rem}
th,td{border:1px solid var(--line);padding:.22rem .55rem;text-align:right;white-space:nowrap}
th{background:var(--bg2);font-weight:600} td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0 1.4rem;break-inside:avoid;page-break-inside:avoid}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2;display:block}
figure.atlas{max-width:500px} figure img.atlas{image-rendering:pixelated;width:min(100%,480px)}
section{scroll-margin-top:2.6rem}
figcaption{font-size:.92rem;margin-top:.35rem;max-width:62rem}
figcaption b{color:var(--mute);font-weight:600}
pre{background:var(--bg2);padding:.8rem 1rem;overflow:auto;font-size:.82rem;line-height:1.4;border-radius:4px}
details{margin:.4rem 0;color:var(--mute);font-size:.88rem}
ul.warn li{color:var(--warn)} .ok{color:#1a7f37}
.figs{display:flex;flex-wrap:wrap;gap:0 1.5rem} .figs figure{flex:0 1 auto}
@media print{
  nav{display:none} main{max-width:none;padding:0}
  body{font-size:10.5pt} a{color:inherit;text-decoration:none}
  h2{break-after:avoid;page-break-after:avoid} section{break-before:auto}
  table,figure,pre{break-inside:avoid;page-break-inside:avoid}
  pre{white-space:pre-wrap} .scroll{overflow:visible} details{display:none}
}
"""


class _Html:
    """Accumulates the page; inlines each distinct PNG once."""

    def __init__(self, out: Path, root: Path | None = None):
        """``root``: the run directory figures must lie in (default: the report's folder)."""
        self.out, self.parts, self.seen = out, [], set()
        self.root = Path(root if root is not None else Path(out).parent).resolve()
        self.pngs: dict[str, bytes | None] = {}   # path -> verified bytes, None if refused (see check_figures)
        self.warnings: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def href(self, path: Path) -> str:
        """A relative link: a path, URL-quoted (no scheme can sneak in) and HTML-escaped."""
        rel = os.path.relpath(Path(path).resolve(), self.out.parent.resolve()).replace(os.sep, "/")
        return html.escape(urllib.parse.quote(rel))

    def check_figures(self, blocks: list[Block]) -> None:
        """Read every figure file the analyses listed, keeping only PNGs inside the run directory.

        A path that leaves the run directory (also through a symbolic link), is not a regular file, or
        does not start with the PNG signature is left out with a warning, so nothing else is mailed out.
        """
        for b in blocks:
            for f in b.figures:
                if isinstance(f.path, bytes) or str(f.path) in self.pngs:
                    continue
                path = Path(f.path)
                self.pngs[str(f.path)] = None
                if not path.exists() and not path.is_symlink():
                    continue
                real = path.resolve()
                why = ("lies outside the run directory" if not real.is_relative_to(self.root) else
                       "is not a regular file" if not real.is_file() else "")
                data = b"" if why else real.read_bytes()
                if not why and not data.startswith(PNG_SIGNATURE):
                    why = "is not a PNG image"
                if why:
                    self.warnings.append(f"figure '{path}' {why}; left out of the report")
                else:
                    self.pngs[str(f.path)] = data

    def cell(self, c) -> str:
        if hasattr(c, "path"):  # a Link
            return f'<a href="{self.href(c.path)}">{html.escape(c.text)}</a>'
        return html.escape(str(c))

    def table(self, caption: str, columns: list, rows: list) -> None:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{self.cell(c)}</td>" for c in r) + "</tr>" for r in rows)
        self.add(f'<div class="scroll"><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr>'
                 f"</thead><tbody>{body}</tbody></table></div>")

    def figure(self, png, reading: str, atlas: bool = False) -> None:
        data = png if isinstance(png, bytes) else self.pngs[str(png)]
        digest = hashlib.sha1(data).hexdigest()
        if digest in self.seen:
            return
        self.seen.add(digest)
        name = "training curves" if isinstance(png, bytes) else Path(png).name
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        cls = ' class="atlas"' if atlas else ""
        self.add(f'<figure{cls}><img{cls} src="{src}" alt="{html.escape(name)}"><figcaption>'
                 f"<b>{html.escape(name)}:</b> {html.escape(reading)}</figcaption></figure>")

    def lines(self, lines: list, cls: str = "lines") -> None:
        if lines:
            self.add(f'<ul class="{cls}">' + "".join(f"<li>{html.escape(str(x))}</li>" for x in lines) + "</ul>")

    def block(self, b: Block, level: str = "h2") -> None:
        self.add(f'<section id="{b.id}"><{level}>{html.escape(b.title)}</{level}>')
        self.lines(b.lines)
        for t in b.tables:
            self.table(t.caption, t.columns, t.rows)
        if b.links:
            self.add("<p>" + " · ".join(f'<a href="{self.href(k.path)}">{html.escape(k.text)}</a>' for k in b.links)
                     + "</p>")
        self.add('<div class="figs">')
        self.check_figures([b])  # already done for a whole report (its warnings are counted up front)
        for f in b.figures:
            if isinstance(f.path, bytes) or self.pngs.get(str(f.path)) is not None:
                self.figure(f.path, f.reading, atlas=not isinstance(f.path, bytes) and Path(f.path).name == "atlas.png")
        self.add("</div>")
        if b.notes:
            self.add("<details><summary>conventions</summary><dl class=\"facts\">" + "".join(
                f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in b.notes.items())
                + "</dl></details>")
        self.add("</section>")


def _study_record(run_dir: Path):
    """The last study's record, or None (with a warning line) when there is none or it is unreadable."""
    from .studies import StudyResult
    path = run_dir / "study.json"
    if not path.exists():
        return None, []
    try:
        return StudyResult.load(path), []
    except ResultFileError as e:
        return None, [str(e)]


def write_report(run, out: str | Path | None = None) -> Path:
    """Write the HTML report of ``run`` (a Run or a run directory) to ``out`` (default RUN/report.html)."""
    run = open_run(run) if isinstance(run, (str, Path)) else run
    out = Path(out) if out is not None else Path(run.path) / "report.html"
    if out.is_dir():
        out = out / "report.html"
    index, views = run.index, [run.select(i) for i in range(len(run.points))]
    multi = len(run.points) > 1
    study, warnings = _study_record(Path(run.path))
    page = _Html(out, run.path)
    sections, headlines = [], []
    for i, v in enumerate(views):
        suffix = f"-p{run.points.index(v.point_key):02d}" if multi else ""
        tag = f"[{v.point_key}] " if multi else ""
        job_seconds = {}
        for j in index["jobs"].values():
            if j.get("status") == "done" and j["point"] == (run.points.index(v.point_key) if multi else 0):
                job_seconds[j["width"]] = job_seconds.get(j["width"], 0.0) + fmt.value(j.get("seconds"))
        res, warn = _results_block(v, job_seconds, suffix)
        warnings += [tag + w for w in warn]
        warnings += [tag + w for w in run_warnings(v, index)]
        blocks, warn = analysis_blocks(v)
        warnings += [tag + w for w in warn]
        for b in blocks:
            b.id = b.id + suffix
            b.title = tag + b.title
        sections.append((res, blocks))
        headlines += [tag + x for x in res.lines[:1]] + [tag + b.lines[0] for b in blocks if b.lines]
    for a in study.failed if study else []:
        warnings.append(f"{a.name}{f' [{a.point}]' if a.point else ''} failed in the last study: {a.message}")
    page.check_figures([b for _, blocks in sections for b in blocks])
    warnings += page.warnings

    r = views[0].recipe
    title = f"widthkit study: {index.get('name', r.name)}"
    page.add(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
             f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>')
    nav = [("summary", "Summary"), ("recipe", "Recipe"), ("versions", "Versions")]
    for res, blocks in sections:
        nav += [(res.id, "Results")] + [(b.id, b.id.removeprefix("analysis-")) for b in blocks]
    nav.append(("warnings", f"Warnings ({len(warnings)})"))
    page.add("<nav>" + "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t in nav) + "</nav><main>")

    # summary
    all_w = sorted({w for v in views for w in v.all_widths})
    secs = sum(fmt.value(j.get("seconds")) for j in index["jobs"].values() if j.get("status") == "done")
    facts = {"run directory": str(run.path), "model": f"{r.model.family} {r.model.kwargs or ''}".strip(),
             "parameterization": f"{r.param.kind} (base width {r.base_width})", "task": r.data.task,
             "loss / optimizer": f"{r.train.loss}; {r.optim.name} lr {r.optim.lr}, {r.optim.schedule} schedule",
             "widths": f"{all_w} ({sum(len(v.widths) for v in views)} finished)",
             "seeds per width": str(len(r.train.seeds)), "steps": str(r.train.steps),
             "grid points": ", ".join(run.points) if multi else "1",
             "training time": f"{secs:.0f} s (sum over jobs)", "created / updated":
             f"{index.get('created', '?')} / {index.get('updated', '?')}"}
    page.add(f'<section id="summary"><h1>{html.escape(title)}</h1><p class="sub">Report written '
             f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')} by widthkit {__version__}</p>"
             '<dl class="facts">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                            for k, v in facts.items()) + "</dl>")
    page.lines(headlines)
    if study and study.analyses:
        page.table("Last `widthkit study` of this run (kept = inputs unchanged, outputs reused)",
                   ["analysis", "point", "status", "seconds", "output"],
                   [[a.name, a.point or "-", a.status, fmt.num(a.seconds), a.out_dir] for a in study.analyses])
        if study.seconds:
            page.table("Study stage timings (seconds)", list(study.seconds),
                       [[fmt.num(x, 4) for x in study.seconds.values()]])
    page.add(f'<p><a href="#warnings">{len(warnings)} warning{"s" if len(warnings) != 1 else ""}</a></p></section>')

    # recipe and versions
    text = index.get("recipe_toml") or json.dumps([p["recipe"] for p in index["points"]], indent=1)
    over = index.get("overrides") or []
    page.add('<section id="recipe"><h2>Recipe</h2>' + (f"<p>overrides: <code>{html.escape(' '.join(over))}</code></p>"
                                                      if over else "") + f"<pre>{html.escape(text)}</pre></section>")
    page.add('<section id="versions"><h2>Versions</h2>')
    page.table("Recorded when the run was created", ["package", "version"],
               [[k, v] for k, v in index.get("versions", {}).items()])
    page.add("</section>")

    for res, blocks in sections:
        page.block(res)
        for b in blocks:
            page.block(b)

    page.add('<section id="warnings"><h2>Warnings</h2>')
    if warnings:
        page.lines(warnings, "warn")
    else:
        page.add('<p class="ok">none: every width finished, no member diverged, every analysis ran</p>')
    page.add("</section></main></body></html>\n")
    atomic_write_text(out, "".join(page.parts))
    return out
