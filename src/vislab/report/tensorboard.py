"""The end of a run in TensorBoard: the report's figures as images and, per trained variant, the run's
hyperparameters with its headline test metric (TensorBoard's HPARAMS tab), in ``tb/report/``.

The per-epoch scalars are written during training by Lightning's ``TensorBoardLogger``
(``vislab.engine.fit``); this adds what only exists once the report is written. Written again from scratch
when a resumed run writes its report again, so nothing is doubled.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any


def _scalar_hparams(cfg: Any) -> dict[str, Any]:
    """The config's fields TensorBoard can hold (numbers, strings, booleans; tuples as text; None left out)."""
    out: dict[str, Any] = {}
    fields = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})
    for k, v in fields.items():
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[k] = ",".join(str(x) for x in v)
    return out


_IMAGES = (".png", ".jpg", ".jpeg")


def log_report(run_dir: Path, summary: dict[str, Any], cfg: Any) -> Path:
    """Write ``run_dir/tb/report``: every ``figures/*.png`` and ``*.jpg`` as an image (tag ``figures/NAME``) and one
    hparams entry per trained variant (its name, the number of seeds, the config's scalar fields) with
    ``test/HEADLINE`` (the mean over seeds) and each other test metric. Returns the folder."""
    import numpy as np
    from PIL import Image
    from tensorboardX import SummaryWriter

    out = Path(run_dir) / "tb" / "report"
    shutil.rmtree(out, ignore_errors=True)
    key = summary["headline"]["metric"]
    hp = _scalar_hparams(cfg)
    for variant, r in summary.get("runs", {}).items():
        test = {f"test/{k}": v["mean"] for k, v in (r.get("test") or {}).items()
                if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))}
        if f"test/{key}" not in test:
            continue
        with SummaryWriter(str(out / "hparams" / variant)) as w:
            w.add_hparams({**hp, "variant": variant, "seeds": len(summary.get("seeds", []))},
                          {f"test/{key}": test.pop(f"test/{key}"), **test}, name=".")
    with SummaryWriter(str(out / "figures")) as w:
        for png in sorted(p for p in (Path(run_dir) / "figures").iterdir() if p.suffix.lower() in _IMAGES):
            with Image.open(png) as im:
                w.add_image(f"figures/{png.stem}", np.asarray(im.convert("RGB")), dataformats="HWC")
    return out
