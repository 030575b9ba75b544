"""Self-contained HTML reports: the one place for their templating, escaping and inlining. Torch-free.

Both reports use it: a slide batch's (`pathnas-infer report`, slide_report.py, on the workstation)
and a run's (`pathnas-edge report`, pathnas/pipeline/report.py, which adds matplotlib charts).
A report is one file that opens from a USB stick on a machine without internet:

- Jinja2 with autoescape on: every value a template prints is escaped (class names, file names, an
  LLM's text are data). Only ``inline_svg`` marks text safe, for SVG this code drew itself.
- Nothing is fetched: pictures are data URIs or inline SVG, the style sheet is inline, there is no
  script and no web font; a Content-Security-Policy (default-src 'none') makes the browser refuse
  any request the page might still try, rather than leak it.
- Readable without JavaScript: each chart is a ``<figure class="chart">`` with its figures in a
  table beside it (the ``chart`` macro of templates/report.html.j2).
- Deterministic: nothing depends on the time it is made; the same files give the same bytes.

Templates are package data (pyproject's [tool.setuptools.package-data]): this package's
templates/, and the templates/ folder of the package that asks (``render(..., package=...)``).
"""
from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

from pathnas.io import write_text_atomic

TEMPLATES = "templates"
REPORT_FILE = "report.html"  # the name of a run's and of a slide batch's report
# Thumbnails: longest side in pixels, and the JPEG quality (heatmaps are photographs of tissue; a
# mask, a few flat colours, stays PNG). About 10-20 KB a slide.
THUMBNAIL_PX = 320
JPEG_QUALITY = 82


def environment(package: str | None = None):
    """The Jinja2 environment: ``package``'s templates/ first, then this package's (the shared base)."""
    import jinja2

    loaders = [jinja2.PackageLoader(p, TEMPLATES) for p in (package, __package__) if p]
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=number, pct=percent, ms=milliseconds)
    return env


def render(template: str, context: dict, package: str | None = None) -> str:
    """``template`` filled with ``context`` (and the version of pathnas-edge that wrote it)."""
    return environment(package).get_template(template).render(version=_version(), **context)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pathnas-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_report(path: str | Path, html: str) -> Path:
    path = Path(path)
    write_text_atomic(path, html)
    return path


# -- figures as people read them -----------------------------------------------------------------

def number(value, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, positional (never 1e-05), thousands apart; '' for None."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent(value, digits: int = 4) -> str:
    return "" if value is None else f"{number(value, digits)} %"


def milliseconds(value, digits: int = 4) -> str:
    return "" if value is None else f"{number(value, digits)} ms"


# -- pictures inline -------------------------------------------------------------------------------

def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_uri(image, max_side: int = THUMBNAIL_PX, photo: bool = True) -> str:
    """A Pillow image (or a path to one) scaled to at most ``max_side`` pixels, as a data URI: JPEG for
    pictures of tissue, PNG (``photo=False``) for masks and drawings. The same input gives the same bytes."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.convert("RGB" if photo else opened.mode)
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.LANCZOS if photo else Image.NEAREST)
    buffer = io.BytesIO()
    if photo:
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return data_uri(buffer.getvalue(), "image/jpeg")
    image.save(buffer, format="PNG", optimize=True)
    return data_uri(buffer.getvalue(), "image/png")


_PROLOG = re.compile(r"\A\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.IGNORECASE)


def inline_svg(svg: str):
    """SVG this code drew (matplotlib's, or a template's), ready to sit in the page: the XML prolog and
    DOCTYPE cut off. Marked safe, so only for SVG whose every text was escaped when it was drawn
    (matplotlib escapes the text it writes); never for SVG from a file or a user."""
    from markupsafe import Markup

    text = _PROLOG.sub("", svg, count=1)
    if not text.lstrip().startswith("<svg"):
        raise ValueError("not an SVG document")
    return Markup(text)
