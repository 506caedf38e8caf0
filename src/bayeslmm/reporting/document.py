"""A tiny document model rendered to Markdown and to one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bayeslmm.numbers import DIGITS
from bayeslmm.reporting.export import render


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    caption: str = ""
    digits: int = DIGITS  # significant digits of numeric cells


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report folder
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Para | Bullets | Table | Image | Code


def to_markdown(blocks: list[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items))
        elif isinstance(b, Code):
            out.append(f"```\n{b.text}\n```")
        elif isinstance(b, Table):
            out.append(render(b.frame, "markdown", b.caption, b.digits).rstrip("\n"))
        elif isinstance(b, Image):
            out.append(f"![{b.caption}]({b.path})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.5}
h1{border-bottom:2px solid #0072B2;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}th{background:#f3f6fa}
td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;font-style:italic;
padding:.3em 0}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-style:italic;color:#555}pre{background:#f6f8fa;padding:.8em;overflow-x:auto}
.warn{color:#a04000}td{white-space:nowrap}td.text{text-align:left;white-space:normal}
.scroll{overflow-x:auto;max-width:100%}
"""


def to_html(blocks: list[Block], title: str, root: Path) -> str:
    """Render blocks as one self-contained HTML page (figures embedded as data URIs)."""
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            out.append(f"<pre>{html.escape(b.text)}</pre>")
        elif isinstance(b, Table):
            # a wide table scrolls inside its box instead of pushing the page past a narrow window
            out.append("<div class='scroll'>" + render(b.frame, "html", b.caption, b.digits).rstrip("\n") + "</div>")
        elif isinstance(b, Image):
            data = base64.b64encode((root / b.path).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(b.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape text and render Markdown's `code`, **bold** and *italic* spans (nothing inside code)."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
        out.append(re.sub(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])", r"<em>\1</em>", s))
    return "".join(out)
