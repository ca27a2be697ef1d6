"""Load an HTML file in headless chromium (Debian's package) and report what rendered.

A checker script is inserted after <head>; on the window's load event (which waits for every
image) it draws each image onto a canvas, which forces a full decode, and records tables and
any script or resource errors into an attribute of <html>, which `--dump-dom` hands back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

# fmt: off
CHECK_JS = r"""<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {   // capture phase also sees <img>/<link>/<script> load failures
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) errors.push('resource: <' + t.tagName.toLowerCase() + '> ' + String(t.src || t.href).slice(0, 60));
    else errors.push('js: ' + e.message);
  }, true);
  window.addEventListener('unhandledrejection', function (e) { errors.push('promise: ' + e.reason); });
  var origErr = console.error;
  console.error = function () { errors.push('console.error: ' + Array.from(arguments).join(' ')); origErr.apply(console, arguments); };
  window.addEventListener('load', function () {
    var images = Array.from(document.images).map(function (img) {
      var r = img.getBoundingClientRect();
      var res = {src: (img.getAttribute('src') || '').slice(0, 40), alt: img.alt, complete: img.complete,
                 naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
                 renderedWidth: r.width, renderedHeight: r.height, opaqueFraction: 0, error: null};
      try {   // drawImage forces a full synchronous decode; corrupt pixel data shows up as transparent pixels
        var c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        var ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        var d = ctx.getImageData(0, 0, c.width, c.height).data, n = 0;
        for (var i = 3; i < d.length; i += 4) if (d[i]) n++;
        res.opaqueFraction = n / (d.length / 4);
      } catch (e) { res.error = String(e).slice(0, 120); }
      res.ok = img.complete && img.naturalWidth > 0 && img.naturalHeight > 0 && !res.error && res.opaqueFraction > 0;
      return res;
    });
    var tables = Array.from(document.querySelectorAll('table')).map(function (t) {
      var body = t.tBodies.length ? Array.from(t.tBodies).reduce(function (a, b) { return a + b.rows.length; }, 0) : t.rows.length;
      return {rows: t.rows.length, bodyRows: body, width: t.getBoundingClientRect().width,
              headers: Array.from(t.querySelectorAll('th')).map(function (h) { return h.textContent.trim(); })};
    });
    var sorting = null, table = document.querySelector('table');   // a click on the second header, then another
    if (table && table.tHead && table.tBodies.length && table.tHead.rows[0].cells.length > 1) {
      var th = table.tHead.rows[0].cells[1];
      var column = function () { return Array.from(table.tBodies[0].rows).map(function (r) { return r.cells[1].textContent.trim(); }); };
      var before = column(); th.click(); var up = column(), upSort = th.getAttribute('aria-sort');
      th.click(); var down = column();
      sorting = {header: th.textContent.trim(), before: before, ascending: up, ascendingMark: upSort,
                 descending: down, descendingMark: th.getAttribute('aria-sort')};
    }
    var h1 = document.querySelector('h1'), next = h1 && h1.nextElementSibling;
    var out = {images: images, tables: tables, errors: errors, title: document.title, compatMode: document.compatMode,
               sorting: sorting, figureUnderTitle: !!(next && next.querySelector('img'))};
    document.documentElement.setAttribute('data-render-check', encodeURIComponent(JSON.stringify(out)));
    document.head.innerHTML = ''; document.body.innerHTML = '';   // keep the dumped DOM tiny (no base64 in stdout)
  });
})();
</script>"""
# fmt: on


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render_in_chromium(html_path: Path, timeout: float = 120) -> dict[str, Any]:
    """What chromium rendered of `html_path`: images (ok, sizes), tables (rows, headers), errors."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("no chromium on PATH")
    source = Path(html_path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="render_check_") as tmp:
        head = re.search(r"<head[^>]*>", source, re.I)
        position = head.end() if head else 0  # never before <!DOCTYPE>: that switches to quirks mode
        page = Path(tmp) / "page.html"
        page.write_text(source[:position] + CHECK_JS + source[position:], encoding="utf-8")
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-crash-reporter", "--disable-breakpad",
            f"--user-data-dir={Path(tmp) / 'profile'}", "--dump-dom", page.as_uri(),
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "HOME": tmp},
        )
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # this call's own process group only
            if process.returncode is None:
                process.communicate()
    found = re.search(r'data-render-check="([^"]*)"', out)
    if process.returncode != 0 or not found:
        raise RuntimeError(f"chromium exited {process.returncode} without a result; stderr: {err[-2000:]}")
    return json.loads(unquote(found.group(1)))
