"""The report skeleton every experiment shares, around the experiment's own sections:

title → setup paragraph → the verdicts → headline table (mean ± 95 % interval, over N seeds) → claims
checked → curves → **the experiment's sections** → time → data → run footer. Numbers are shown to the
precision their interval supports, times to 3 significant figures.
"""

from __future__ import annotations

from typing import Any

from vislab.protocol.claims import verdict_sentence
from vislab.protocol.results import RunResult, format_interval
from vislab.report.blocks import curves_figure, metric_label, run_footer
from vislab.report.document import Report


def sig(v: Any, digits: int = 3) -> str:
    """A time or size to ``digits`` significant figures (``9.4137 → '9.41'``, ``2308.2 → '2,310'``)."""
    if not isinstance(v, (int, float)) or v != v:
        return "—"
    if v == 0:
        return "0"
    from math import floor, log10

    decimals = digits - 1 - int(floor(log10(abs(v))))
    return f"{round(float(v), decimals):,.{max(decimals, 0)}f}"


def seeds_text(result: RunResult) -> str:
    n = len(result.seeds)
    if n == 1:
        return (f"one seed ({result.seeds[0]}): single values; the claims' intervals come from a paired bootstrap "
                "over the test items and leave out training variance")
    return f"{n} seeds ({', '.join(map(str, result.seeds))}): mean ± half-width of the 95 % Student-t interval"


def headline_table(rep: Report, exp: Any, result: RunResult) -> None:
    key, higher = exp.headline
    metrics = [key, *[m for m in exp.table_metrics if m != key]]
    rows = []
    for group in ("runs", "baselines"):
        for name, entry in (result.summary.get(group) or {}).items():
            test = entry.get("test", {})
            t = entry.get("time", {})
            epochs = entry.get("epochs")
            params = entry.get("params")
            rows.append([name if group == "runs" else f"{name} (untrained)", "—" if params is None else params,
                         "—" if epochs is None else epochs if isinstance(epochs, int) else "/".join(map(str, epochs)),
                         *[format_interval(test[m]) if isinstance(test.get(m), dict) else "—" for m in metrics],
                         sig(t.get("fit_s")), sig(t.get("step_ms_mean"))])
    header = ["row", "params", "epochs", *[f"test {metric_label(m)}" for m in metrics], "fit s", "ms/step"]
    rep.table(header, rows, caption=f"Test metrics, {seeds_text(result)}. Headline: {metric_label(key)} "
              f"({'higher' if higher else 'lower'} is better).")


def claims_table(rep: Report, result: RunResult) -> None:
    if not result.claims:
        return
    rows = []
    for c in result.claims:
        d = c.get("diff") or {}
        ci = d.get("ci95")
        rows.append([c["text"], "—" if d.get("mean") is None else f"{d['mean']:+.3g}",
                     f"[{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else "—", c.get("note", ""), f"**{c['verdict']}**"])
    rep.table(["claim", "difference a − b", "95 % CI", "how", "verdict"], rows,
              caption="Holds: the interval lies on the claimed side (inside the tolerance for an equality). Not "
                      "shown: it contains 0 (or leaves the tolerance). Fails: it lies on the wrong side.")


def time_table(rep: Report, result: RunResult) -> None:
    rows = []
    for name, entry in result.summary.get("runs", {}).items():
        t = entry.get("time", {})
        rows.append([name, sig(t.get("fit_s")), sig(t.get("epoch_s_mean")), sig(t.get("step_ms_mean"))])
    if rows:
        rep.table(["variant", "fit s", "s/epoch", "ms/step"], rows,
                  caption="Wall time, mean over seeds, on this run's machine (3 significant figures).")


def write_report(exp: Any, ctx: Any, data: Any, result: RunResult) -> None:
    info = getattr(data, "info", {}) or {}
    rep = Report(f"{exp.name} — {info.get('name', '')}")
    setup = exp.describe(ctx, data)
    if setup:
        rep.text(setup)
    rep.text(verdict_sentence(result.claims))
    rep.heading("Results")
    headline_table(rep, exp, result)
    if result.claims:
        rep.heading("Claims checked")
        claims_table(rep, result)
    rows = [r for r in ctx.run.read_metrics() if r.get("seed") in (result.seeds[0], None)]
    if rows and exp.curve_metrics:
        rep.heading("Curves")
        curves_figure(rep, rows, list(exp.curve_metrics), ctx.run.figure("curves.png"),
                      caption=f"Per epoch, seed {result.seeds[0]}: "
                      + ", ".join(metric_label(m) for m in exp.curve_metrics) + "; train solid, validation dashed.")
    exp.report(ctx, rep, result, data)
    rep.heading("Time")
    time_table(rep, result)
    rep.heading("Data")
    rep.text(f"{info.get('name')}: train {info.get('train')}, val {info.get('val')}, test {info.get('test')}."
             + (f" {info['description']}." if info.get("description") else ""))
    run_footer(rep, ctx.run, result.seeds[0])
    rep.write(ctx.run.path)
