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
th { background: #f6f8fa; cursor: pointer; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tr:nth-child(even) td { background: #fbfbfc; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0 1.5rem; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2rem; }
code { background: #f6f8fa; padding: 0.1rem 0.3rem; border-radius: 4px; }
"""
_IMAGE = re.compile(r'<img alt="([^"]*)" src="([^"]+)"\s*/?>')
_FIRST_FIGURE = re.compile(r"<p><img [^>]*></p>\n?")
_TITLE_END = "</h1>\n"
# Sorting by a column is a click on its header (again: the other way). A column whose cells all
# start with a number (a percentage with its interval, a count with thousands commas) sorts by
# that number, blanks and n/a last; any other sorts as text. Inline and small: the page stays one
# file that loads nothing from the network.
_SORT_SCRIPT = r"""
document.querySelectorAll('table').forEach(function (table) {
  var head = table.tHead, body = table.tBodies[0];
  if (!head || !body) return;
  Array.from(head.rows[0].cells).forEach(function (th, column) {
    th.tabIndex = 0;
    var sort = function () {
      var down = th.getAttribute('aria-sort') === 'ascending';
      Array.from(head.rows[0].cells).forEach(function (other) { other.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', down ? 'descending' : 'ascending');
      var rows = Array.from(body.rows), key = function (row) { return row.cells[column].textContent.trim(); };
      var number = function (text) { return parseFloat(text.replace(/,/g, '').replace(/^\u2212/, '-')); };
      var blank = function (text) { return !text || /^(n\/a|\u2013|-)$/.test(text); };
      var numeric = rows.every(function (r) { return blank(key(r)) || !isNaN(number(key(r))); });
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (numeric) {
          x = number(x); y = number(y);
          if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);  // blanks and n/a last, either way
          return down ? y - x : x - y;
        }
        return down ? y.localeCompare(x) : x.localeCompare(y);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    };
    th.addEventListener('click', sort);
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter') sort(); });
  });
});
"""


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

    body = _headline_first(_IMAGE.sub(inline, body))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n<script>{_SORT_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _headline_first(body: str) -> str:
    """The page's first figure (the headline: a report's accuracy by severity, the leaderboard's ranking) moved
    to just under its title; the markdown keeps its sections' order."""
    figure = _FIRST_FIGURE.search(body)
    title = body.find(_TITLE_END)
    if figure is None or title < 0 or figure.start() < title:
        return body
    rest = body[: figure.start()] + body[figure.end() :]
    cut = title + len(_TITLE_END)
    return rest[:cut] + figure.group(0) + rest[cut:]
