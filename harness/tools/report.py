"""results/index.html: one static page of a results folder, no server, no network, no script.

    python -m harness report results/        (run writes it after its tables, from the folder it wrote)

From the top: every verdict family (a table with a `passed` column, by its `check` where it has one) with its
pass and fail counts and the failing rows; the agreement error after every block, per dtype and backend, against
its tolerance (inline SVG); the folder's plots (its PNGs, inline); the gate's last diff where the folder holds one
(diff/*.csv, its worse or refused rows counted as failures); a table that cannot be read named at the top; then
every table of the folder (its CSV, the provenance columns set aside), and the provenance (git sha, library
versions, devices) the rows record.
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

PROVENANCE = ["harness_version", "git_sha", "torch", "timm", "open_clip", "device", "seed", "config_hash", "time_utc",
              "suite", "suite_version", "profile"]
KEYS = ["suite", "model", "library", "dataset", "check", "comparison", "stage", "dtype", "backend", "task",
        "rel_err", "tolerance", "rule", "top1", "flips_beyond_round_off", "result"]
MAX_ROWS = 500  # rows of one table shown on the page (the CSV holds all)
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px}
th{background:#f3f3f3;position:sticky;top:0}.fail{color:#b00020;font-weight:bold}.pass{color:#1b5e20}
.summary td{font-size:14px}details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
.muted{color:#666;font-size:12px}svg{background:#fff;border:1px solid #ddd;margin:4px}
"""


UNREADABLE: dict[str, str] = {}  # the last render's tables that could not be read: name -> why


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every CSV of the folder, and the gate's diff (folder/diff/*.csv) as diff_*; one that cannot be read is
    named in UNREADABLE (the page says so at the top: its verdicts are unknown)."""
    out = {}
    UNREADABLE.clear()
    for path in [*sorted(folder.glob("*.csv")), *sorted(folder.glob("diff/*.csv"))]:
        name = path.stem if path.parent == folder else f"diff_{path.stem}"
        try:
            out[name] = pd.read_csv(path, low_memory=False)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
            UNREADABLE[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return out


def _passed(df: pd.DataFrame) -> pd.Series:
    """True / False per judged row (None: not judged), as the runner judges them (runner.failing_rows: a skipped
    row is no failure); the gate's diff by its verdict (worse or refused: failed; not judged: none)."""
    if "passed" not in df and "verdict" in df:  # harness.tools.diff's verdicts
        refused = df["refused"].notna() if "refused" in df else pd.Series(False, index=df.index)
        verdict = df["verdict"].fillna("").astype(str)
        ok = verdict.map(lambda v: False if v == "B worse" else None if v.startswith("not judged") or not v else True)
        return ok.where(~refused, False)
    truth = {True: True, False: False, "True": True, "False": False, "true": True, "false": False}  # 1 == True
    ok = df["passed"].map(lambda v: truth.get(v, None) if not isinstance(v, float) or v == v else None)
    if "result" in df:
        ok = ok.where(df["result"].astype(str).ne("skipped") | ok.eq(True), None)
    return ok


def verdicts(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(families: table, check, passed, failed; the failing rows with their key columns)."""
    families, failing = [], []
    for name, df in tables.items():
        if "passed" not in df and not (name.startswith("diff") and "verdict" in df):
            continue
        judged = df.assign(_ok=_passed(df)).dropna(subset=["_ok"])
        keys = judged["check"].fillna("").astype(str) if "check" in judged else pd.Series("", index=judged.index)
        for check, g in judged.groupby(keys):
            families.append({"table": name, "check": check or "(all rows)", "passed": int(g["_ok"].sum()),
                             "failed": int((~g["_ok"].astype(bool)).sum())})
            bad = g[~g["_ok"].astype(bool)]
            if len(bad):
                failing.append(bad[[c for c in KEYS if c in bad]].assign(table=name))
    fam = pd.DataFrame(families, columns=["table", "check", "passed", "failed"])
    return fam, (pd.concat(failing, ignore_index=True) if failing else pd.DataFrame())


def _table_html(df: pd.DataFrame, limit: int = MAX_ROWS) -> str:
    shown = df.head(limit)
    body = shown.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}", escape=True)
    if len(df) > limit:
        body += f'<p class="muted">the first {limit} of {len(df)} rows; every row is in the CSV</p>'
    return body


def _svg_blocks(df: pd.DataFrame, model: str, width: int = 640, height: int = 260) -> str:
    """log10 relative error after each block, one line per (dtype, backend), each beside its tolerance (dashed)."""
    colours = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#4e342e", "#ad1457"]
    stages = list(dict.fromkeys(df["stage"].astype(str)))
    values = pd.to_numeric(pd.concat([df["rel_err"], df["tolerance"]]), errors="coerce")
    values = values[(values > 0) & values.map(math.isfinite)]  # an infinite error is drawn at the top edge
    if not len(stages) or not len(values):
        return ""
    lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
    hi = max(hi, lo + 1)
    left, right, top, bottom = 60, 160, 20, 40

    def x(i):
        return left + (width - left - right) * (i / max(1, len(stages) - 1))

    def y(v):
        v = min(max(float(v), 10.0 ** lo), 10.0 ** hi)
        return top + (height - top - bottom) * (hi - math.log10(v)) / (hi - lo)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{left}" y="14" font-size="12">{html.escape(model)}: relative error after each block</text>']
    for e in range(lo, hi + 1):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(10 ** e):.1f}" y2="{y(10 ** e):.1f}" '
                     f'stroke="#eee"/><text x="4" y="{y(10 ** e) + 4:.1f}" font-size="10">1e{e}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="10">{len(stages)} blocks, {html.escape(stages[0])}'
                 f' … {html.escape(stages[-1])}</text>')
    groups = df.groupby([df["dtype"].astype(str), df["backend"].fillna("").astype(str)], sort=False)
    for k, ((dtype, backend), g) in enumerate(groups):
        colour = colours[k % len(colours)]
        index = [stages.index(s) for s in g["stage"].astype(str)]
        line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in zip(index, g["rel_err"]) if pd.notna(v))
        tol = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in zip(index, g["tolerance"]) if pd.notna(v))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<polyline points="{tol}" fill="none" stroke="{colour}" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{width - right + 8}" y="{top + 14 * k + 10}" font-size="11" fill="{colour}">'
                     f'{html.escape(dtype)} {html.escape(backend)}</text>')
    parts.append(f'<text x="{width - right + 8}" y="{height - 8}" font-size="10">dashed: tolerance</text></svg>')
    return "".join(parts)


def render(folder: Path) -> str:
    folder = Path(folder)
    tables = _tables(folder)
    families, failing = verdicts(tables)
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8><title>vitclip-harness results</title>",
           f"<style>{STYLE}</style></head><body>",
           f"<h1>vitclip-harness results: {html.escape(folder.resolve().name)}/</h1>"]
    n_fail = int(families["failed"].sum()) if len(families) else 0
    n_pass = int(families["passed"].sum()) if len(families) else 0
    if n_fail:
        verdict = f'<span class="fail">{n_fail} failing rows</span>'
    elif UNREADABLE:
        verdict = f'<span class="fail">{len(UNREADABLE)} unreadable tables: their verdicts are unknown</span>'
    elif not n_pass:
        verdict = '<span class="fail">no verdicts</span>: no table of this folder judged a row'
    else:
        verdict = '<span class="pass">every judged row passes</span>'
    out.append(f'<h2 id="verdicts">Verdicts</h2><p>{verdict} ({n_pass} passing) in {len(families)} verdict '
               'families (a table with a <code>passed</code> column, by its check; the gate\'s diff by its '
               'verdict).</p>')
    if UNREADABLE:
        out.append('<h3 class="fail">Unreadable tables</h3><ul>' + "".join(
            f"<li>{html.escape(n)}.csv: {html.escape(why)}</li>" for n, why in UNREADABLE.items()) + "</ul>")
    if len(families):
        out.append('<div class="summary">' + _table_html(families) + "</div>")
    if len(failing):
        out.append('<h3 class="fail">Failing rows</h3>' + _table_html(failing))
    blocks = tables.get("agreement_blocks")
    if blocks is not None and {"stage", "rel_err", "tolerance", "dtype"} <= set(blocks):
        rows = blocks[blocks.get("check", pd.Series("block", index=blocks.index)).astype(str) == "block"]
        if len(rows):
            out.append('<h2 id="agreement">Agreement, block by block</h2><p>Each model\'s relative error after '
                       'every block against the library, per dtype and attention backend, and its tolerance.</p>')
            models = rows["model"].fillna("(unnamed)").astype(str) if "model" in rows else pd.Series(
                "", index=rows.index)
            for model, g in rows.groupby(models, sort=False):
                out.append(_svg_blocks(g, str(model)))
    pngs = sorted(folder.glob("*.png"))
    if pngs:
        out.append('<h2 id="plots">Plots</h2>')
        for png in pngs:
            data = base64.b64encode(png.read_bytes()).decode()
            out.append(f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}" '
                       f'style="max-width:100%"><figcaption>{html.escape(png.name)}</figcaption></figure>')
    diffs = [n for n in tables if n.startswith("diff")]
    if diffs:
        out.append('<h2 id="gate">The regression gate</h2>')
        for name in diffs:
            out.append(f"<h3>{html.escape(name)}</h3>" + _table_html(tables[name]))
    out.append('<h2 id="tables">Tables</h2>')
    for name, df in tables.items():
        shown = df[[c for c in df if c not in PROVENANCE]]
        out.append(f'<details id="table-{html.escape(name)}"><summary>{html.escape(name)} ({len(df)} rows)</summary>'
                   + _table_html(shown) + "</details>")
    prov = {c: sorted({str(v) for t in tables.values() if c in t for v in t[c].dropna().unique()})
            for c in ("git_sha", "harness_version", "torch", "timm", "open_clip", "device")}
    out.append('<h2 id="provenance">Provenance</h2><table>' + "".join(
        f"<tr><th>{c}</th><td>{html.escape(', '.join(v))}</td></tr>" for c, v in prov.items()) + "</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(folder: Path) -> Path:
    """folder/index.html, written atomically (a reader never sees half a page)."""
    folder = Path(folder)
    page = render(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".index.", suffix=".html")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, folder / "index.html")
    return folder / "index.html"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..infra.suite import ConfigError

    p = argparse.ArgumentParser(prog="python -m harness report", description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="a results folder (its *.csv and *.png)")
    args = p.parse_args(argv)
    if not args.folder.is_dir() or not any(args.folder.glob("*.csv")):
        raise ConfigError(f"{args.folder}: not a results folder (no *.csv in it); name the folder run --out wrote")
    print(f"wrote {write_report(args.folder)}")
    return 0
