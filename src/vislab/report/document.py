"""A report built once as a list of blocks, written as ``report.md`` (figures linked) and as a
self-contained ``report.html`` (figures embedded as base64, no external files or scripts)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vislab.io.files import atomic_write_text


@dataclass
class _Block:
    kind: str  # heading | text | table | figure | code
    data: Any


def fmt(v: Any, digits: int = 4) -> str:
    """Numbers for tables: floats rounded, ints with thousands separators."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:  # NaN
            return "—"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "" if v is None else str(v)


@dataclass
class Report:
    title: str
    blocks: list[_Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> Report:
        self.blocks.append(_Block("heading", (level, text)))
        return self

    def text(self, markdown: str) -> Report:
        """A paragraph; supports **bold**, `code` and [links](url); blank lines split paragraphs."""
        self.blocks.append(_Block("text", markdown.strip()))
        return self

    def bullets(self, items: list[str]) -> Report:
        self.blocks.append(_Block("bullets", list(items)))
        return self

    def table(self, header: list[str], rows: list[list[Any]], caption: str | None = None) -> Report:
        self.blocks.append(_Block("table", (header, [[fmt(c) for c in r] for r in rows], caption)))
        return self

    def figure(self, path: str | Path, caption: str = "") -> Report:
        self.blocks.append(_Block("figure", (Path(path), caption)))
        return self

    def code(self, text: str) -> Report:
        self.blocks.append(_Block("code", text.rstrip("\n")))
        return self

    # -- writers ----------------------------------------------------------------------------
    def to_markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "heading":
                level, text = b.data
                out += ["#" * level + " " + text, ""]
            elif b.kind == "text":
                out += [b.data, ""]
            elif b.kind == "bullets":
                out += [f"- {item}" for item in b.data] + [""]
            elif b.kind == "table":
                header, rows, caption = b.data
                if caption:
                    out += [f"*{caption}*", ""]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("")
            elif b.kind == "figure":
                path, caption = b.data
                rel = _relpath(path, base)
                out += [f"![{caption}]({rel})", "", f"*{caption}*" if caption else "", ""]
            elif b.kind == "code":
                out += ["```", b.data, "```", ""]
        return "\n".join(out).rstrip() + "\n"

    def to_html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        for b in self.blocks:
            if b.kind == "heading":
                level, text = b.data
                parts.append(f"<h{level}>{_inline(text)}</h{level}>")
            elif b.kind == "text":
                for para in re.split(r"\n\s*\n", b.data):
                    parts.append(f"<p>{_inline(para)}</p>")
            elif b.kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.data) + "</ul>")
            elif b.kind == "table":
                header, rows, caption = b.data
                cap = f"<caption>{_inline(caption)}</caption>" if caption else ""
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b.kind == "figure":
                path, caption = b.data
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                mime = "jpeg" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "png"
                parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/{mime};base64,{data}">'
                             f"<figcaption>{_inline(caption)}</figcaption></figure>")
            elif b.kind == "code":
                parts.append(f"<pre>{html.escape(b.data)}</pre>")
        return _HTML.format(title=html.escape(self.title), body="\n".join(parts))

    def write(self, run_dir: str | Path) -> tuple[Path, Path]:
        run_dir = Path(run_dir)
        md, page = run_dir / "report.md", run_dir / "report.html"
        atomic_write_text(md, self.to_markdown(run_dir))
        atomic_write_text(page, self.to_html())
        return md, page


def _relpath(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    t = re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', t)
    return t


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ border-bottom: 2px solid #ddd; padding-bottom: .3em; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #eee; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
caption {{ caption-side: top; text-align: left; font-style: italic; padding-bottom: 4px; }}
figure {{ margin: 1.2em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 0.9em; color: #555; }}
pre {{ background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 0.85em; }}
code {{ background: #f6f8fa; padding: 1px 4px; }}
</style></head><body>
{body}
</body></html>
"""
