"""`vislab demo`: every registered experiment on its embedded data, one after the other, with an
index page linking the reports."""

from __future__ import annotations

import html
import time
from datetime import datetime
from pathlib import Path

from vislab.engine.run_dir import atomic_write_text, to_json
from vislab.errors import UserError
from vislab.experiments._registry import list_experiments
from vislab.experiments.runner import RunOptions, run_experiment


def run_demo(*, quick: bool = False, out: str | None = None, only: list[str] | None = None,
             accelerator: str = "auto") -> int:
    names = [n for n, _ in list_experiments()]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(f"unknown experiment {unknown[0]!r}; registered: {', '.join(names)}")
        names = [n for n in names if n in only]
    root = Path(out) if out else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    results = []
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"\n=== vislab demo [{i}/{len(names)}]: {name}{' (quick)' if quick else ''} ===", flush=True)
        t0 = time.perf_counter()
        summary = run_experiment(RunOptions(name=name, out=str(root / name), quick=quick, demo=True,
                                            accelerator=accelerator))
        results.append((name, summary, time.perf_counter() - t0))
    total = time.perf_counter() - t_all
    _write_index(root, results, total, quick)
    print(f"\nvislab demo: {len(results)} experiment(s) in {total / 60:.1f} min; open {root / 'index.html'}")
    return 0


def _headline(summary: dict) -> str:
    parts = []
    for variant, r in summary.get("runs", {}).items():
        t = r.get("test", {})
        for key in ("accuracy", "map", "f1_micro", "iou"):
            if key in t and isinstance(t[key], (int, float)):
                parts.append(f"{variant}: {key} {t[key]:.3f}")
                break
    return "; ".join(parts)


def _write_index(root: Path, results: list, total: float, quick: bool) -> None:
    rows = "".join(
        f'<tr><td><a href="{html.escape(name)}/report.html">{html.escape(name)}</a></td>'
        f"<td>{html.escape(_headline(s))}</td><td>{secs:.0f} s</td></tr>"
        for name, s, secs in results)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>vislab demo</title>"
            f"<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{border:1px solid #ccc;"
            f"padding:4px 8px}}table{{border-collapse:collapse}}</style></head><body>"
            f"<h1>vislab demo{' (quick)' if quick else ''}</h1><p>Total {total / 60:.1f} min.</p>"
            f"<table><tr><th>experiment</th><th>test headline</th><th>time</th></tr>{rows}</table></body></html>")
    atomic_write_text(root / "index.html", page)
    atomic_write_text(root / "demo.json", to_json({"quick": quick, "total_s": total, "experiments": {
        name: {"seconds": secs, "report": f"{name}/report.html"} for name, _, secs in results}}))
