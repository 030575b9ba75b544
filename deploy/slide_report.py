"""`pathnas-infer report OUT`: a slide batch as one HTML file people look at. Torch-free.

Written at the end of every batch (OUT/report.html) and on demand. It reads what the batch left in
OUT, tolerantly (a batch stopped half-way, an older version's files, a moved folder): the run
record (run_metadata.json: bundle, signer, runtime, settings and every input's row; results.csv
when the record is gone), and each input's pictures: the thumbnail with the heatmap of the most
likely class painted over it, the mask of a segmentation model in colour. A file that moved with
the folder is found under its folder name in OUT; a picture that cannot be found or read says so.

The page (deploy/html.py: self-contained, escaped, deterministic): every input's picture and
slide-level figures, a chart of the class probabilities and one of the tiles read per slide (SVG
drawn by the template, the figures in a table beside each), failures with their reasons, the
settings and the bundle.
"""
from __future__ import annotations

import csv
from pathlib import Path

from pathnas.errors import InvalidFileError, MissingFileError
from pathnas.io import read_json

from . import html
from .geojson import PALETTE
from .infer import MAX_WHOLE_SIDE_PX, RUN_METADATA

TEMPLATE = "slide_report.html.j2"
RESULTS_CSV = "results.csv"
# Beyond this many inputs, the cards (pictures) and chart bars of the first ones only, the tables of all:
# the file stays a few MB (thumbnails are 10-20 KB each) however many images a batch held.
MAX_PICTURES = 300
# A row's pictures and the folder under OUT each is written to: the thumbnail with the tissue in its class's
# colour (the batch writes it when it counts the slide's areas), the heatmap of the most likely class, the mask.
PICTURE_FIELDS = (("thumbnail", "thumbnails"), ("heatmap", "tiles"), ("mask", "masks"))
# Statuses of an input that was read to the end, so its pictures are shown. A blank slide ("no_tissue")
# is one of them (its thumbnail shows what was scanned), but it fails the run as a scanning error, as
# the exit code does: it is listed among the failures too.
SHOWN_STATUSES = ("ok", "no_tissue")


def colour(i: int) -> str:
    """Class ``i``'s colour: the one its GeoJSON classification and thumbnail tint carry (QuPath shows it)."""
    return "#%02x%02x%02x" % tuple(PALETTE[i % len(PALETTE)])


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def _int(value) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def read_batch(out: Path) -> dict:
    """The run record of the batch in ``out`` (its rows from results.csv when the record is missing)."""
    out = Path(out)
    if not out.is_dir():
        raise MissingFileError(f"{out} is not a folder: give the --out folder of a `pathnas-infer` run")
    meta_path = out / RUN_METADATA
    if meta_path.is_file():
        meta = read_json(meta_path, "run record")
        if not isinstance(meta.get("results", []), list):
            raise InvalidFileError(f"{meta_path}: field 'results' is not a list of rows")
        return meta
    if (out / RESULTS_CSV).is_file():
        with open(out / RESULTS_CSV, newline="", encoding="utf-8") as f:
            return {"results": list(csv.DictReader(f)), "note": f"{RUN_METADATA} is missing: rows from {RESULTS_CSV}"}
    raise MissingFileError(f"{out} holds neither {RUN_METADATA} nor {RESULTS_CSV}: not the --out folder of a "
                           f"`pathnas-infer` run")


def locate(recorded, out: Path, folder: str) -> Path | None:
    """A file a row names: where it was recorded (relative to the working directory of the run), else under
    OUT in the folder it was written to, or in ``folder`` (the default), where a moved OUT keeps it."""
    if not recorded or not isinstance(recorded, str):
        return None
    path = Path(recorded)
    for candidate in (path, out / path.parent.name / path.name, out / folder / path.name):
        if candidate.is_file():
            return candidate
    return None


def _mask_picture(path: Path, classes: list[str]):
    """A mask PNG (class indices) in the class colours; the background (class 0) light grey, so that the
    extent of an empty mask shows on the page."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        mask = np.asarray(image.convert("L"))
    rgb = np.full((*mask.shape, 3), 235, np.uint8)
    for i in range(1, max(len(classes), int(mask.max()) + 1)):
        rgb[mask == i] = PALETTE[i % len(PALETTE)]
    return Image.fromarray(rgb)


def _pictures(row: dict, out: Path, classes: list[str]) -> tuple[list[dict], list[str]]:
    """The row's pictures as data URIs with captions; what could not be shown, and why."""
    pictures, problems = [], []
    for field, folder in PICTURE_FIELDS:
        if not row.get(field):
            continue
        path = locate(row[field], out, folder)
        if path is None:
            problems.append(f"{field} {row[field]} not found")
            continue
        try:
            if field == "mask":
                uri = html.thumbnail_uri(_mask_picture(path, classes), photo=False)
                caption = "mask: " + ", ".join(c for c in classes[1:]) if len(classes) > 1 else "mask"
            elif field == "thumbnail":
                uri = html.thumbnail_uri(path)
                caption = "thumbnail, tissue in the colour of its class"
            else:
                uri = html.thumbnail_uri(path)
                shown = path.stem.split("_heatmap_", 1)[-1] if "_heatmap_" in path.stem else ""
                caption = f"thumbnail, tiles tinted red by P({shown})" if shown else "thumbnail with heatmap"
        except Exception as err:  # an unreadable picture is a line of the report, never the end of it
            problems.append(f"{field} {path}: cannot be read ({type(err).__name__}: {err})")
            continue
        pictures.append({"uri": uri, "caption": caption, "file": str(path)})
    if row.get("tiles") in (None, "") and row.get("input"):  # an image the model saw whole: the image itself
        picture = _whole_image(Path(str(row["input"])))
        if picture is not None:
            pictures.insert(0, picture)
    return pictures, problems


def _whole_image(path: Path) -> dict | None:
    """A small image's own picture (as the model saw it whole); None for a file Pillow cannot read, or a large one."""
    from PIL import Image

    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            if max(image.size) > MAX_WHOLE_SIDE_PX:
                return None
            uri = html.thumbnail_uri(image.convert("RGB"))
    except Exception:  # not an image Pillow reads (a DICOM folder's file, a slide format): no picture, no failure
        return None
    return {"uri": uri, "caption": "the image", "file": str(path)}


def _name(row: dict) -> str:
    return Path(str(row.get("input", "?"))).name


def batch_context(out: Path, meta: dict) -> dict:
    """What the template shows, from the run record: nothing else is read but the pictures."""
    rows = [r for r in meta.get("results", []) if isinstance(r, dict)]
    classes = [str(c) for c in meta.get("classes") or []] or sorted(
        {k[len("prob_"):] for r in rows for k in r if str(k).startswith("prob_")})
    ok = [r for r in rows if r.get("status") in SHOWN_STATUSES]
    failed = [r for r in rows if r.get("status") != "ok"]
    cards = []
    for row in ok[:MAX_PICTURES]:
        pictures, problems = _pictures(row, out, classes)
        figures = [("prediction", row.get("prediction") or ""),
                   *((f"P({c})", _float(row.get(f"prob_{c}"))) for c in classes if row.get(f"prob_{c}") not in (None, "")),
                   ("foreground", html.percent(_float(row.get("foreground_pct")))),
                   ("tissue", _area(row.get("tissue_mm2"))),
                   *((f"{c}: area, share of tissue", f"{_area(row.get(f'area_mm2_{c}'))}, "
                      f"{html.percent(100 * _float(row.get(f'share_{c}')), 3)}")
                     for c in classes if _float(row.get(f"share_{c}")) is not None),
                   ("status", row.get("error") if row.get("status") != "ok" else ""),
                   ("tiles (tissue / all)", f"{row['tissue_tiles']} / {row['tiles']}" if row.get("tiles") not in (None, "")
                    else ""),
                   ("resolution", _resolution(row)), ("level", _int(row.get("level"))),
                   ("seconds", _float(row.get("seconds"))), ("done before", "yes" if row.get("skipped_done") else ""),
                   ("note", row.get("note") or "")]
        cards.append({"name": _name(row), "input": str(row.get("input", "")), "pictures": pictures,
                      "problems": problems, "figures": figures})
    probability_bars = [(_name(r), [(_float(r.get(f"prob_{c}")) or 0.0, colour(i)) for i, c in enumerate(classes)])
                        for r in ok if any(r.get(f"prob_{c}") not in (None, "") for c in classes)]
    probability_rows = [[_name(r), r.get("prediction") or "", *(_float(r.get(f"prob_{c}")) for c in classes)]
                        for r in ok if any(r.get(f"prob_{c}") not in (None, "") for c in classes)]
    # the slide-level answers (areas per class), where the batch counted them
    counted = [r for r in ok if any(_float(r.get(f"share_{c}")) is not None for c in classes)]
    area_bars = [(_name(r), [(_float(r.get(f"share_{c}")) or 0.0, colour(i)) for i, c in enumerate(classes)])
                 for r in counted]
    area_rows = [[_name(r), _area(r.get("tissue_mm2")), *(_float(r.get(f"share_{c}")) for c in classes),
                  _float(r.get("share_unclassified"))] for r in counted]
    tiled = [r for r in ok if _int(r.get("tiles")) is not None]
    most = max((_int(r.get("tiles")) or 0 for r in tiled), default=0)
    tile_bars = [(_name(r), [(_int(r.get("tissue_tiles")) or 0, "#c2185b"),
                             (_int(r.get("background_tiles")) or 0, "#c9ced6")]) for r in tiled]
    tile_rows = [[_name(r), _int(r.get("tiles")), _int(r.get("tissue_tiles")), _int(r.get("background_tiles")),
                  _float(r.get("seconds")), _float(r.get("tiles_per_s"))] for r in tiled]
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    finished = meta.get("finished")
    return {
        "title": f"Slide batch {Path(out).resolve().name}",
        "subtitle": [f"{len(rows)} input(s): {len(rows) - len(failed)} done, {len(failed)} failed"
                     + ("" if finished is not False else "; the run did not finish (stopped, or still running)"),
                     f"bundle {meta.get('bundle', '?')}, task {meta.get('task', '?')}, classes "
                     f"{', '.join(classes) or '?'}"] + ([meta["note"]] if meta.get("note") else []),
        "source": str(out), "classes": classes, "legend": [(c, colour(i)) for i, c in enumerate(classes)],
        "cards": cards, "more_than_shown": max(0, len(ok) - MAX_PICTURES), "max_pictures": MAX_PICTURES,
        "probability_bars": probability_bars[:MAX_PICTURES], "probability_rows": probability_rows,
        "area_bars": area_bars[:MAX_PICTURES], "area_rows": area_rows,
        "tile_bars": tile_bars[:MAX_PICTURES], "tile_rows": tile_rows, "most_tiles": most or 1,
        "failures": [[str(r.get("input", "")), str(r.get("error", ""))] for r in failed],
        "settings": [(k, v if isinstance(v, (int, float, str)) else str(v)) for k, v in settings.items()]
                    + [(k, meta.get(k)) for k in ("runtime", "device", "cores", "threads", "threads_from", "batch_size",
                                                   "reader_threads", "started_at", "seconds") if meta.get(k) is not None],
        # the workers that wrote the folder (a batch run on several machines or processes), as recorded
        "workers": [[w.get("host"), str(w.get("pid", "")), w.get("shard") or "", w.get("started_at"), w.get("finished_at") or "",
                     len(w["slides_done"]) if isinstance(w.get("slides_done"), list) else w.get("slides_done"),
                     w.get("seconds")] for w in meta.get("workers") or [] if isinstance(w, dict)],
        "bundle": [("bundle", meta.get("bundle")), ("manifest SHA-256", meta.get("bundle_sha256")),
                   ("signature", meta.get("signature")), ("signed by", meta.get("signed_by")),
                   ("model", model.get("path")), ("backend", model.get("backend")),
                   ("precision", model.get("precision"))],
        "versions": sorted((meta.get("versions") or {}).items()),
    }


def _area(value) -> str:
    """An area in mm² as the batch recorded it ("unknown" where the slide states no resolution)."""
    number = _float(value)
    return f"{html.number(number, 3)} mm²" if number is not None else str(value or "")


def _resolution(row: dict) -> str:
    slide, read = _float(row.get("slide_mpp")), _float(row.get("read_mpp"))
    if slide is None:
        return ""
    return f"{html.number(slide, 3)} µm/px" + (f", read at {html.number(read, 3)} µm/px" if read else "")


def batch_report(out: str | Path) -> str:
    out = Path(out)
    context = batch_context(out, read_batch(out))
    context["sections"] = [("slides", "Slides"), ("figures", "Figures"), ("failures", "Failures"),
                           ("settings", "Settings"), ("bundle", "Bundle")]
    return html.render(TEMPLATE, context)


def write_batch_report(out: str | Path, path: str | Path | None = None) -> Path:
    """OUT/report.html (or ``path``) for the batch in ``out``; returns where it was written."""
    out = Path(out)
    return html.write_report(Path(path) if path else out / html.REPORT_FILE, batch_report(out))
