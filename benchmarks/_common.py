"""What every benchmark script shares: the machine line of its table and the rewrite of its section of
``benchmarks/RESULTS.md``.

Each script owns one section per device, between ``<!-- NAME DEVICE begin -->`` and ``<!-- NAME DEVICE end -->``;
a run replaces only that section (atomically: a temporary file, then a rename), so the scripts can be rerun in
any order and on any machine without touching the others' numbers.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch
import torchvision

import vislab

RESULTS = Path(__file__).with_name("RESULTS.md")


def load_average() -> tuple[float, ...]:
    return tuple(round(v, 2) for v in os.getloadavg())


def machine_info(device: str, **extra: str) -> dict:
    """Date, CPU model, cores, torch threads, library versions (``extra``: more, e.g. ``timm=timm.__version__``),
    the load average at the start and, on CUDA, the GPU's name. The caller adds ``load_average_end`` at the end."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, **extra, "vislab": vislab.__version__,
            "python": platform.python_version(), "load_average": load_average()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict, *, threads_note: str = "") -> str:
    """One line: date, CPU (cores, torch threads[, note]), every version in ``info``, load average start → end."""
    versions = ", ".join(f"{k} {info[k]}" for k in info
                         if k not in ("date", "cpu", "cores", "torch_threads", "python", "load_average",
                                      "load_average_end", "gpu", "clock"))
    return (f"{info['date'][:10]}, {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads"
            f"{', ' + threads_note if threads_note else ''}), {versions}, python {info['python']}, "
            f"load average {info['load_average']} → {info.get('load_average_end', '?')}"
            + (f", GPU {info['gpu']}" if "gpu" in info else ""))


def write_section(path: Path, name: str, device: str, body: list[str], *, intro: str | None = None,
                  heading: str | None = None) -> None:
    """Replace the section ``name``/``device`` of ``path`` by ``body`` (lines between the markers), or append it:
    after ``intro`` (added once, recognised by its first line) and under ``### heading`` (default: the device)."""
    begin, end = f"<!-- {name} {device} begin -->", f"<!-- {name} {device} end -->"
    block = "\n".join([begin, "", *body, "", end])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        if intro is not None and intro.splitlines()[0] not in text:
            text = text.rstrip("\n") + "\n\n" + intro.rstrip("\n")
        title = heading or ("CUDA" if device == "cuda" else "CPU")
        text = text.rstrip("\n") + f"\n\n### {title}\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
