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
    """The page for `markdown_text`, with every image it links inside `folder` inlined as base64.

    The text quotes a report folder's own files (model names, the description), and a folder may be
    someone else's: HTML in it is shown as text, never run, and an image outside `folder` (a file
    of this machine's, a tracking URL) is shown as its alt text, never read.
    """
    converter = markdown.Markdown(extensions=["tables"], output_format="html")
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert(markdown_text)
    root = folder.resolve()

    def inline(match: re.Match[str]) -> str:
        alt, source = match.group(1), match.group(2)
        path = (folder / source).resolve()
        if not (path.is_relative_to(root) and path.is_file()):
            return alt  # already escaped by markdown
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{alt}" src="data:image/png;base64,{encoded}" />'

    body = _IMAGE.sub(inline, body)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )
