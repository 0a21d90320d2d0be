"""`vislab demo`: every registered experiment on its embedded data, one after the other, with an
index page linking the reports."""

from __future__ import annotations

import html
import time
from datetime import datetime
from pathlib import Path

from vislab.engine.run_dir import to_json
from vislab.errors import UserError
from vislab.experiments._registry import get_experiment, list_experiments
from vislab.io.files import atomic_write_text
from vislab.protocol.runner import RunOptions, run_experiment


def run_demo(*, quick: bool = False, out: str | None = None, only: list[str] | None = None,
             accelerator: str = "auto", logger: str = "tensorboard") -> int:
    names = [n for n, _ in list_experiments()]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(f"unknown experiment {unknown[0]!r}; registered: {', '.join(names)}")
        names = [n for n in names if n in only]
    from vislab.engine.config import apply_overrides, check_constraints

    for name in names:  # every experiment's demo settings are checked before the first one starts
        exp = get_experiment(name)
        cfg = apply_overrides(exp.Config(), exp.demo_overrides(quick))
        check_constraints(cfg)
        exp.validate(cfg, None, None)
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
                                            accelerator=accelerator, logger=logger)).summary
        results.append((name, summary, time.perf_counter() - t0))
        exp = get_experiment(name)
        print(f"=== {name}: {_headline(summary, exp.headline)} ({results[-1][2]:.0f} s; demo budget "
              f"{exp.demo_budget_s:.0f} s) ===", flush=True)
        for c in summary.get("claims", []):
            print(f"    claim: {c['text']}: {c['verdict']}", flush=True)
    total = time.perf_counter() - t_all
    _write_index(root, results, total, quick)
    print(f"\nvislab demo: {len(results)} experiment(s) in {total / 60:.1f} min; open {root / 'index.html'}")
    return 0


def _headline(summary: dict, headline: tuple[str, bool]) -> str:
    """``"metric (higher is better): variant 0.61, other 0.58"`` from the experiment's headline metric."""
    from vislab.report.blocks import headline_values, metric_label

    key, higher = headline
    vals = headline_values(summary, headline)
    if not vals:
        return f"no test {metric_label(key)}"
    return (f"test {metric_label(key)} ({'higher' if higher else 'lower'} is better): "
            + ", ".join(f"{v} {x:.3f}" for v, x in vals.items()))


def _write_index(root: Path, results: list, total: float, quick: bool) -> None:
    rows = []
    budget_total = 0.0
    for name, s, secs in results:
        exp = get_experiment(name)
        budget_total += exp.demo_budget_s
        over = "" if quick or secs <= exp.demo_budget_s else " (over budget)"
        claims = "<br>".join(f"{html.escape(c['text'])}: <b>{html.escape(c['verdict'])}</b>"
                             for c in s.get("claims", [])) or "—"
        rows.append(f'<tr><td><a href="{html.escape(name)}/report.html">{html.escape(name)}</a></td>'
                    f"<td>{html.escape(_headline(s, exp.headline))}</td><td>{claims}</td><td>{secs:.0f} s{over}</td>"
                    f"<td>{exp.demo_budget_s:.0f} s</td></tr>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>vislab demo</title>"
            f"<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{border:1px solid #ccc;"
            f"padding:4px 8px}}table{{border-collapse:collapse}}</style></head><body>"
            f"<h1>vislab demo{' (quick)' if quick else ''}</h1><p>Total {total / 60:.1f} min "
            f"(budgets add up to {budget_total / 60:.1f} min; the demo's target is 12 min on 2 idle CPU cores, "
            f"3 min with --quick).</p>"
            f"<p>One seed per experiment: a claim's interval is a paired bootstrap over the test items (training "
            f"variance not measured); run <code>vislab run NAME --seeds 3</code> for intervals over seeds.</p>"
            f"<table><tr><th>experiment</th><th>headline metric per variant</th><th>claims (verdict)</th>"
            f"<th>time</th><th>budget</th></tr>"
            f"{''.join(rows)}</table></body></html>")
    atomic_write_text(root / "index.html", page)
    atomic_write_text(root / "demo.json", to_json({"quick": quick, "total_s": total, "experiments": {
        name: {"seconds": secs, "budget_s": get_experiment(name).demo_budget_s, "report": f"{name}/report.html",
               "claims": [{"text": c["text"], "verdict": c["verdict"]} for c in s.get("claims", [])],
               "headline": {"metric": get_experiment(name).headline[0],
                            "higher_is_better": get_experiment(name).headline[1],
                            "values": _headline_values(s, get_experiment(name).headline)}}
        for name, s, secs in results}}))


def _headline_values(summary: dict, headline: tuple[str, bool]) -> dict[str, float]:
    from vislab.report.blocks import headline_values

    return headline_values(summary, headline)
