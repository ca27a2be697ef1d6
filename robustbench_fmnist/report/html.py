"""report.html: the markdown report as one self-contained page, its figures embedded."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0 1.4rem; font-size: 0.85rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfbfc; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0 1.5rem; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2rem; }
code { background: #f6f8fa; padding: 0.1rem 0.3rem; border-radius: 4px; }
"""
_IMAGE = re.compile(r'<img alt="([^"]*)" src="([^"]+)"\s*/?>')


def render_html(markdown_text: str, folder: Path, title: str) -> str:
    """The page for `markdown_text`, with every image it links (relative to `folder`) inlined as base64."""
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")

    def inline(match: re.Match[str]) -> str:
        alt, source = match.group(1), match.group(2)
        encoded = base64.b64encode((folder / source).read_bytes()).decode("ascii")
        return f'<img alt="{alt}" src="data:image/png;base64,{encoded}" />'

    body = _IMAGE.sub(inline, body)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )
