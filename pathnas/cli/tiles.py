"""`pathnas-edge data tiles` (annotated whole-slide images -> a training set) and `data synth-slides`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pathnas.errors import ConfigError

from .common import JSON_HELP, console, err_console, on_interrupt, print_json


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (value or "").split(",") if c.strip())


def tiles(
    slides: list[Path] = typer.Argument(..., help="slide files, or folders of them (SVS, TIFF, NDPI, MRXS, SCN, DICOM)"),
    annotations: list[Path] = typer.Option(..., "--annotations", help="annotation files or folders (QuPath GeoJSON, "
                                           "ASAP XML, ImageScope XML), paired with slides by file name; repeatable"),
    mpp: float = typer.Option(..., help="microns per pixel of the tiles (the model's resolution, e.g. 0.5 for 20x)"),
    size: int = typer.Option(224, help="tile side in pixels at --mpp"),
    out: Path = typer.Option(..., "--out", help="folder of the image data set to write (resumes one begun)"),
    pack_dir: Optional[Path] = typer.Option(None, "--pack", help="also decode the tiles into this pack (`data pack`)"),
    task: str = typer.Option("classify", help="classify (a class per tile) or segment (a mask per tile)"),
    label_rule: str = typer.Option("centroid", help="centroid, majority or exclude-mixed"),
    min_cover: float = typer.Option(0.5, help="majority, exclude-mixed: the share of the tile the class must cover"),
    min_tissue: float = typer.Option(0.5, help="tiles with less tissue (stained pixels) than this share are left out"),
    overlap: float = typer.Option(0.0, help="share of a tile its neighbours overlap"),
    classes: Optional[str] = typer.Option(None, help="comma-separated classes to keep (default: every class found)"),
    priority: Optional[str] = typer.Option(None, help="comma-separated: where regions overlap, the earlier class "
                                           "owns the overlap (default: the order of --classes)"),
    background_class: Optional[str] = typer.Option(None, help="label unannotated tissue with this class (default: "
                                                   "such tiles are left out)"),
    pairs: Optional[Path] = typer.Option(None, help="CSV slide,annotations[,patient]: pairs, and splits by patient"),
    mpp_override: list[str] = typer.Option([], help="SLIDE=MICRONS_PER_PIXEL, or a CSV slide,mpp, for slides that "
                                           "state no resolution; repeatable"),
    refuse_invalid: bool = typer.Option(False, "--refuse-invalid", help="refuse self-intersecting polygons (default: "
                                        "repair them, saying which)"),
    image_format: str = typer.Option("png", help="png; tiff (uncompressed: several times faster to write, half "
                                     "again the size); or pack: no image files, OUT is a pack of the tiles"),
    seed: int = typer.Option(0, help="seed of the splits"),
    workers: int = typer.Option(1, min=1, help="slides tiled at once, one process each"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cut annotated whole-slide images into labelled tiles (or tiles and masks) at --mpp: an image folder with
    splits by slide (or patient), dataset.json and a report per slide and class. Resumes where it stopped."""
    from pathnas.data.tiling import TileSettings, check_inputs, make_tiles, pair_inputs, read_mpp_overrides
    from pathnas.progress import progress_bar

    wanted = _names(classes)
    settings = TileSettings(mpp=mpp, size=size, overlap=overlap, task=task, rule=label_rule, min_cover=min_cover,
                            min_tissue=min_tissue, classes=wanted, priority=_names(priority),
                            background_class=background_class, repair=not refuse_invalid, image_format=image_format)
    settings.check()
    if pack_dir is not None and image_format == "pack":
        raise ConfigError("--pack DIR packs the image files; with --image-format pack, --out is the pack already")
    jobs = pair_inputs(slides, annotations, pairs, read_mpp_overrides(mpp_override))
    checked = check_inputs(jobs, settings)  # bad input is refused before the progress bar and before any file
    on_interrupt(f"the slides finished are kept in {out}; run the same command again to continue")
    with progress_bar(console=err_console, disable=as_json) as bar:
        job = bar.add_task(f"tiling {len(jobs)} slide(s)", total=None)
        report = make_tiles(jobs, out, settings, seed=seed, workers=workers, checked=checked,
                            advance=lambda done, total: bar.update(job, completed=done, total=total),
                            warn=lambda line: err_console.print(f"note: {line}", markup=False, highlight=False,
                                                                soft_wrap=True))
    packed = None
    if pack_dir is not None:
        from pathnas.data.shards import pack

        packed = pack(out, pack_dir, size=size, seed=seed)
    if as_json:
        print_json({"out": str(out), **report, **({"pack": str(pack_dir)} if packed else {})})
        return
    _print_report(report, out)
    if packed:
        console.print(f"pack written: {pack_dir}", markup=False)


def _print_report(report: dict, out: Path) -> None:
    from rich.table import Table

    table = Table(title="tiles kept per class and split")
    for col in ("class", "train", "val", "test", "kept"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in report["classes"].items():
        table.add_row(name, *(str(row[k]) for k in ("train", "val", "test", "kept")))
    console.print(table)
    slides = Table(title="per slide: kept, and left out because")
    for col in ("slide", "split", "kept", "no label", "mixed", "cover", "tissue"):
        slides.add_column(col, justify="left" if col in ("slide", "split") else "right", overflow="fold")
    for s in report["slides"]:
        slides.add_row(s["name"], s["split"] or "-", str(s["kept"]), str(s["unannotated"]), str(s["mixed"]),
                       str(s["under_min_cover"]), str(s["too_little_tissue"]))
    console.print(slides)
    sizes = ", ".join(f"{split} {n}" for split, n in report["splits"].items())
    console.print(f"data set ready in {out}: tiles {sizes} (split by slide: no slide's tiles on two sides); "
                  f"details in {out / 'report.json'}", markup=False, highlight=False, soft_wrap=True)


def synth_slides(
    out: Path = typer.Option(..., "--out", help="folder: slides/, and geojson/, asap/, imagescope/ annotations"),
    n: int = typer.Option(4, min=1, help="number of slides"),
    side: int = typer.Option(1024, min=128, help="level-0 side in pixels (a multiple of 128)"),
    mpp: float = typer.Option(0.25, help="microns per pixel at level 0"),
    seed: int = typer.Option(0),
) -> None:
    """Synthetic pyramidal TIFF slides with painted Tumor, Stroma and Necrosis regions, and their annotations
    as QuPath GeoJSON, ASAP XML and ImageScope XML (to try `data tiles` and `pipeline --slides`)."""
    from pathnas.data.synth_slides import synthetic_slides

    if side % 128:
        raise ConfigError(f"--side {side}: a multiple of 128")
    made = synthetic_slides(out, n=n, side=side, mpp=mpp, seed=seed)
    console.print(f"{len(made)} slides in {out / 'slides'}; annotations in {out / 'geojson'}, {out / 'asap'}, "
                  f"{out / 'imagescope'}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the commands to the `data` group."""
    app.command("tiles")(tiles)
    app.command("synth-slides")(synth_slides)
