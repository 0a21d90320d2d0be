"""Start-up time of every ``vislab`` command: the wall time of a fresh ``python -m vislab ...`` process, median of N.

    python benchmarks/startup.py [--repeat 7] [--pairs 100] [--write]

Rows: ``--help``, ``list``, ``show`` (and its first call, which imports the experiment to describe it and keeps
the text under a fingerprint of the sources), ``arith`` (a layer spec), each task command's ``-h`` (the cost of reaching
its parser), ``change IMG1 IMG2 --method phase`` and ``--method fourier-mellin`` on a 128×128 pair, and one
``change --pairs DIR`` call over ``--pairs`` pairs (its time per pair is the marginal cost once started).
``python -c "import torch"`` is the reference row: what a command that imports torch pays at least.

The table goes to stdout with the load average before and after, and each row's CPU time (user + system of the
child), which a busy machine inflates much less than the wall time. Timings on a loaded machine are not the
targets' numbers (SPEC: ``list``/``show``/``--help`` < 0.5 s, the classical ``change`` < 1.5 s, 100 pairs well
under a minute, on an idle 2-core machine), so ``--write`` (the ``startup cpu`` section of
``benchmarks/RESULTS.md``) refuses when the 1-minute load average exceeds 0.5 (``--force`` writes anyway,
with the load in the machine line).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

TARGETS = {"--help": 0.5, "list": 0.5, "show folder-classifier": 0.5, "change (phase)": 1.5,
           "change (fourier-mellin)": 1.5}


def _texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """Smoothed noise in [0, 1]: a texture every method registers."""
    from scipy.ndimage import gaussian_filter

    t = gaussian_filter(rng.normal(size=(side, side)), 2.0)
    return (t - t.min()) / (t.max() - t.min())


def make_pairs(root: Path, n: int, size: int = 128, seed: int = 0) -> Path:
    """``n`` pairs ``pNNN_1.png``/``pNNN_2.png`` (the second shifted by a few pixels) in ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        big = _texture(rng, size + 16)
        dx, dy = rng.integers(-6, 7, size=2)
        a = big[8:8 + size, 8:8 + size]
        b = big[8 - dy:8 - dy + size, 8 - dx:8 - dx + size]
        for name, img in (("1", a), ("2", b)):
            Image.fromarray((img * 255).astype(np.uint8)).save(root / f"p{k:03d}_{name}.png")
    return root


def wall(cmd: list[str], repeat: int, env: dict[str, str], *, cold: bool = False) -> tuple[float, float, float]:
    """(median wall, min wall, median CPU) seconds of ``cmd`` over ``repeat`` runs after one warm-up (file
    cache); CPU is the child's user + system time, which waiting for a busy machine does not inflate. A failing
    run is an error. ``cold``: each run gets an empty ``VISLAB_CACHE`` (what `show` pays the first time)."""
    import resource

    times, cpus = [], []
    for k in range(repeat + 1):
        run_env = {**env, "VISLAB_CACHE": tempfile.mkdtemp(prefix="vislab-cold-")} if cold else env
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
        dt = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        if k:
            times.append(dt)
            cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(times), min(times), statistics.median(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per row (after one warm-up)")
    ap.add_argument("--pairs", type=int, default=100, help="pairs in the --pairs row")
    ap.add_argument("--write", action="store_true", help="write the 'startup cpu' section of benchmarks/RESULTS.md")
    ap.add_argument("--force", action="store_true", help="with --write: write even on a loaded machine")
    args = ap.parse_args()
    load0 = tuple(round(v, 2) for v in os.getloadavg())
    if args.write and load0[0] > 0.5 and not args.force:
        print(f"refusing --write: load average {load0} (above 0.5); the targets are for an idle machine",
              file=sys.stderr)
        return 2
    env = {**os.environ, "VISLAB_PROGRESS": "0"}
    py = [sys.executable]
    rows: list[tuple[str, float, float, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_pairs(tmp / "pairs", args.pairs)
        one = make_pairs(tmp / "one", 1, seed=1)
        a, b = one / "p000_1.png", one / "p000_2.png"
        cases = [
            ('python -c "import torch" (reference)', py + ["-c", "import torch"]),
            ("--help", py + ["-m", "vislab", "--help"]),
            ("list", py + ["-m", "vislab", "list"]),
            ("show folder-classifier", py + ["-m", "vislab", "show", "folder-classifier"]),
            ("show folder-classifier (first call)", py + ["-m", "vislab", "show", "folder-classifier"]),
            ('arith "conv(16,k=3) relu" --input 3x32x32',
             py + ["-m", "vislab", "arith", "conv(16,k=3) relu", "--input", "3x32x32"]),
            *[(f"{c} -h", py + ["-m", "vislab", c, "-h"]) for c in ("change", "detect", "segment", "gradcam")],
            ("change (phase)", py + ["-m", "vislab", "change", str(a), str(b), "--method", "phase", "--json",
                                     "--out", str(tmp / "o1")]),
            ("change (fourier-mellin)", py + ["-m", "vislab", "change", str(a), str(b), "--method", "fourier-mellin",
                                              "--json", "--out", str(tmp / "o2")]),
        ]
        env["VISLAB_CACHE"] = str(tmp / "cache")  # not the user's cache
        for label, cmd in cases:
            cold = label.endswith("(first call)")
            med, low, cpu = wall(cmd, max(1, args.repeat // 3) if cold else args.repeat, env, cold=cold)
            target = TARGETS.get(label)
            if cold:
                label += ": nothing cached, the experiment imported"
            rows.append((label, med, low, cpu, "" if target is None else
                         f"< {target} s: {'met' if med < target else 'not met'}"))
            print(f"{label:<48} median {med:6.2f} s  min {low:6.2f} s  cpu {cpu:6.2f} s", file=sys.stderr)
        for method in ("phase", "fourier-mellin"):
            cmd = py + ["-m", "vislab", "change", "--pairs", str(pairs), "--method", method, "--json",
                        "--out", str(tmp / f"o-{method}")]
            med, low, cpu = wall(cmd, max(1, args.repeat // 3), env)
            single = next(r for r in rows if r[0] == f"change ({method})")
            label = f"change --pairs ({args.pairs} pairs, {method})"
            per_pair = (med - single[1]) / max(args.pairs - 1, 1) * 1000
            per_pair_cpu = (cpu - single[3]) / max(args.pairs - 1, 1) * 1000
            rows.append((label, med, low, cpu, f"{per_pair:.1f} ms wall ({per_pair_cpu:.1f} ms CPU) per extra pair"
                         + ("; < 60 s: " + ("met" if med < 60 else "not met") if args.pairs >= 100 else "")))
            print(f"{label:<48} median {med:6.2f} s  min {low:6.2f} s  cpu {cpu:6.2f} s", file=sys.stderr)
    load1 = tuple(round(v, 2) for v in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = (f"{datetime.date.today()}, {cpu} ({os.cpu_count()} cores), python {platform.python_version()}, "
               f"load average {load0} → {load1}")
    table = [f"Generated by `python benchmarks/startup.py --repeat {args.repeat} --pairs {args.pairs}` on {machine}.",
             "", "| command | wall median s | wall min s | CPU median s | note |", "|---|---:|---:|---:|---|"]
    table += [f"| `{label}` | {med:.2f} | {low:.2f} | {cpu:.2f} | {note} |" for label, med, low, cpu, note in rows]
    print("\n".join(table))
    if args.write:
        from _common import RESULTS, write_section

        write_section(RESULTS, "startup", "cpu", table, heading="CPU",
                      intro="## Start-up of the commands\n\n`python benchmarks/startup.py`: wall time of a fresh "
                            "`python -m vislab ...` process (median of N after one warm-up), and one `change --pairs` "
                            "call over many pairs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
