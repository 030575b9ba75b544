"""Annotated whole-slide images -> training sets (`data tiles`): labels equal the painted truth under every
rule, the three annotation formats give the same tiles, no slide is on two sides of a split, masks equal
the painted regions, runs resume, bad input is one line, and pathnas-infer's GeoJSON comes back in."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle_helpers import bundle, run_infer_here  # noqa: F401 (a fixture)
from cli_helpers import pathnas_edge
from pathnas.data.annotations import AnnotationError, read_annotations
from pathnas.data.datasets import DataError
from pathnas.data.synth_slides import CLASSES, COLOURS, OTHER_TISSUE, PRIORITY, synthetic_slides
from pathnas.data.tiling import TileSettings, make_tiles, pair_inputs, split_groups
from pathnas.errors import ConfigError
from pathnas.io import sha256_file

# 1024 px slides at 0.25 um/px read at 0.5 um/px: level 1, tiles of 32 px = 64 level-0 px, 256 per slide.
MPP, SIZE, SIDE0 = 0.5, 32, 64
NAME = re.compile(r"(?P<slide>slide\d+)_x(?P<x>\d+)_y(?P<y>\d+)\.png$")


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    made = synthetic_slides(root, n=4, side=1024, mpp=0.25, seed=0)
    return root, {s.name: s for s in made}


def tiles_of(out: Path) -> dict[str, str]:
    """Tile file name -> its class (folder), for a classification set."""
    return {p.name: p.parent.name for p in out.glob("*/*.png")}


def run(root: Path, out: Path, fmt: str = "geojson", **settings) -> dict:
    jobs = pair_inputs([root / "slides"], [root / fmt])
    options = {"mpp": MPP, "size": SIZE, "priority": PRIORITY, **settings}
    return make_tiles(jobs, out, TileSettings(**options), seed=0)


def truth_name(value: int, background: str | None) -> str | None:
    return CLASSES[value - 1] if 1 <= value <= len(CLASSES) else background


def expected(slide, x: int, y: int, rule: str, min_cover: float, background: str | None) -> str | None:
    """The label the painted pixels give the tile at (x, y) (level 0) under ``rule``."""
    window = slide.labels(x, y, SIDE0, SIDE0)
    if rule == "centroid":
        return truth_name(int(slide.labels(x + SIDE0 // 2, y + SIDE0 // 2, 1, 1)[0, 0]), background)
    names = [truth_name(int(v), background) for v in window.ravel()]
    counts = {n: names.count(n) for n in set(names) if n is not None}
    if not counts:
        return None
    if rule == "exclude-mixed" and len(counts) > 1:
        return None
    rank = list(PRIORITY) + [background]
    best = max(counts, key=lambda n: (counts[n], -rank.index(n)))
    return best if counts[best] >= min_cover * SIDE0 * SIDE0 else None


@pytest.mark.parametrize("rule, background", [("centroid", None), ("majority", None), ("exclude-mixed", None),
                                              ("majority", "Other")])
def test_every_kept_tile_has_the_painted_label_and_no_slide_is_in_two_splits(slides, tmp_path, rule, background):
    root, by_name = slides
    out = tmp_path / "out"
    report = run(root, out, rule=rule, background_class=background, min_cover=0.6)
    kept = tiles_of(out)
    assert kept and sum(report["splits"].values()) == len(kept)
    for name, label in kept.items():
        m = NAME.match(name)
        slide, x, y = by_name[m["slide"]], int(m["x"]), int(m["y"])
        assert label == expected(slide, x, y, rule, 0.6, background), (name, label)
        window = slide.labels(x, y, SIDE0, SIDE0)
        if (window == window[0, 0]).all():  # a pure tile shows its class's paint: read at the right place
            colour = np.asarray(Image.open(out / label / name)).reshape(-1, 3).mean(0)
            assert np.abs(colour - COLOURS[window[0, 0]]).max() < 4
    # every tile wholly inside one painted class is kept (none lost on the way)
    for slide in by_name.values():
        for y in range(0, 1024, SIDE0):
            for x in range(0, 1024, SIDE0):
                window = slide.labels(x, y, SIDE0, SIDE0)
                if (window == window[0, 0]).all() and 1 <= window[0, 0] <= len(CLASSES):
                    assert kept.get(f"{slide.name}_x{x}_y{y}.png") == CLASSES[window[0, 0] - 1]
    splits = json.loads((out / "splits.json").read_text())
    side = {}
    for split in ("train", "val", "test"):
        for rel in splits[split]:
            assert side.setdefault(NAME.search(rel)["slide"], split) == split  # a slide's tiles on one side only
    assert sorted(side) == sorted(by_name) and set(side.values()) == {"train", "val", "test"}
    marker = json.loads((out / "dataset.json").read_text())
    assert marker["mpp"] == MPP and marker["image_size"] == SIZE and marker["label_rule"] == rule
    assert len(marker["slides"]) == 4 and all(len(s["sha256"]) == 64 for s in marker["slides"])


def test_the_three_annotation_formats_give_the_same_tiles(slides, tmp_path):
    root, _ = slides
    results = {}
    for fmt in ("geojson", "asap", "imagescope"):
        run(root, tmp_path / fmt, fmt, rule="majority")
        results[fmt] = (tiles_of(tmp_path / fmt), json.loads((tmp_path / fmt / "splits.json").read_text())["groups"])
    assert results["geojson"] == results["asap"] == results["imagescope"]
    assert len(results["geojson"][0]) > 100


def test_overlaps_go_by_priority_never_by_file_order(slides, tmp_path):
    """The files list Stroma first; Tumor owns the overlap by priority, and Stroma does when put first."""
    root, by_name = slides
    slide = by_name["slide00"]
    x0, y0, _, _ = slide._u(3, 1, 4, 2)  # the square where the Stroma L overlaps the Tumor square
    x, y = -(-x0 // SIDE0) * SIDE0, -(-y0 // SIDE0) * SIDE0  # a tile wholly inside it (a u = 128 px square)
    name = f"slide00_x{x}_y{y}.png"
    run(root, tmp_path / "tumor")
    run(root, tmp_path / "stroma", priority=("Stroma", "Tumor"))
    assert tiles_of(tmp_path / "tumor")[name] == "Tumor" and tiles_of(tmp_path / "stroma")[name] == "Stroma"


def test_segmentation_masks_equal_the_painted_regions(slides, tmp_path):
    root, by_name = slides
    out = tmp_path / "seg"
    run(root, out, "imagescope", task="segment", min_tissue=0.3)
    marker = json.loads((out / "dataset.json").read_text())
    values = marker["class_values"]
    assert values["background"] == 0 and marker["task"] == "segment"
    masks = sorted((out / "masks").glob("*.png"))
    assert masks and len(masks) == len(list((out / "images").glob("*.png")))
    for path in masks:
        m = NAME.match(path.name)
        slide, x, y = by_name[m["slide"]], int(m["x"]), int(m["y"])
        painted = slide.labels(x, y, SIZE, SIZE, step=SIDE0 // SIZE)  # each mask pixel's centre
        truth = np.vectorize(lambda v: values[truth_name(int(v), "background")])(painted)
        assert np.array_equal(np.asarray(Image.open(path)), truth), path.name
    from pathnas.data import build_loaders  # the toolchain reads it as any segmentation folder

    loaders = build_loaders(out, SIZE, 4)
    assert loaders.task == "segment" and loaders.classes == ["background", *sorted(CLASSES)]


def test_a_rerun_skips_finished_slides_and_redoes_a_killed_or_changed_one(slides, tmp_path, monkeypatch):
    import pathnas.data.tiling as tiling

    root, _ = slides
    src = tmp_path / "in"
    shutil.copytree(root, src)
    reference = tmp_path / "reference"
    run(src, reference)
    out = tmp_path / "out"
    original = tiling.write_json_atomic

    def killed_at_the_third_record(path, obj):
        if Path(path).name == "slide02.json":
            raise KeyboardInterrupt("killed")
        return original(path, obj)

    monkeypatch.setattr(tiling, "write_json_atomic", killed_at_the_third_record)
    with pytest.raises(KeyboardInterrupt):
        run(src, out)
    monkeypatch.setattr(tiling, "write_json_atomic", original)
    assert not (out / "dataset.json").exists()
    report = run(src, out)
    assert [s["skipped"] for s in report["slides"]] == [True, True, False, False]
    assert tiles_of(out) == tiles_of(reference)
    assert (out / "splits.json").read_text() == (reference / "splits.json").read_text()
    # slide01's annotations change: only it is redone, and its old tiles are gone
    doc = json.loads((src / "geojson" / "slide01.geojson").read_text())
    doc["features"] = [f for f in doc["features"] if f["properties"]["classification"]["name"] != "Necrosis"]
    (src / "geojson" / "slide01.geojson").write_text(json.dumps(doc))
    report = run(src, out)
    assert [s["skipped"] for s in report["slides"]] == [True, False, True, True]
    assert not any(n.startswith("slide01") and c == "Necrosis" for n, c in tiles_of(out).items())
    with pytest.raises(ConfigError, match=r"other settings \(size changed\)"):
        run(src, out, size=48)


def test_slides_in_parallel_processes_give_the_same_set(slides, tmp_path):
    root, _ = slides
    run(root, tmp_path / "one")
    jobs = pair_inputs([root / "slides"], [root / "geojson"])
    make_tiles(jobs, tmp_path / "two", TileSettings(mpp=MPP, size=SIZE, priority=PRIORITY), seed=0, workers=2)
    assert tiles_of(tmp_path / "one") == tiles_of(tmp_path / "two")
    assert (tmp_path / "one" / "splits.json").read_text() == (tmp_path / "two" / "splits.json").read_text()


# -- splits --------------------------------------------------------------------------------------------------

def test_splits_are_seeded_stratified_and_by_patient(slides, tmp_path):
    counts = {f"s{i}": {"A": 10, "B": 5 if i % 3 == 0 else 0} for i in range(9)}
    first = split_groups(counts, seed=1)
    assert first == split_groups(counts, seed=1)
    assert all(any(counts[g]["B"] for g in first[s]) for s in ("train", "val", "test"))  # the rare class in each
    with pytest.raises(DataError, match="at least 3"):
        split_groups({"a": {"A": 1}, "b": {"A": 1}}, seed=0)
    root, _ = slides
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("slide,annotations,patient\n" + "".join(
        f"slide{i:02d}.tif,slide{i:02d}.geojson,{'P1' if i < 2 else f'P{i}'}\n" for i in range(4)))
    jobs = pair_inputs([root / "slides"], [root / "geojson"], pairs)
    out = tmp_path / "out"
    make_tiles(jobs, out, TileSettings(mpp=MPP, size=SIZE, priority=PRIORITY), seed=0)
    splits = json.loads((out / "splits.json").read_text())
    assert splits["by"] == "patient" and sorted(sum(splits["groups"].values(), [])) == ["P1", "P2", "P3"]
    sides = {s for s in ("train", "val", "test") for rel in splits[s] if re.search(r"slide0[01]_", rel)}
    assert len(sides) == 1  # one patient's two slides on one side


# -- bad input: one line, nothing written ---------------------------------------------------------------------

def cli(*args) -> tuple[int, str]:
    code, out, err = pathnas_edge("data", "tiles", *map(str, args))
    return code, out + err


def one_slide(root: Path, tmp_path: Path, annotation_text: str | None = None, suffix: str = ".geojson") -> tuple[Path, Path]:
    """Folders with slide00 and one annotation file for it (the given text, or its GeoJSON), and slides 01 and 02
    with theirs (splits need three slides)."""
    slides, notes = tmp_path / "s", tmp_path / "a"
    slides.mkdir()
    notes.mkdir()
    for name in ("slide00", "slide01", "slide02"):
        shutil.copy(root / "slides" / f"{name}.tif", slides)
    for name in ("slide01", "slide02"):
        shutil.copy(root / "geojson" / f"{name}.geojson", notes)
    target = notes / f"slide00{suffix}"
    if annotation_text is None:
        shutil.copy(root / "geojson" / "slide00.geojson", target)
    else:
        target.write_text(annotation_text)
    return slides, notes


@pytest.mark.parametrize("text, suffix, fragment", [
    ("", ".geojson", r"slide00.geojson: empty file"),
    ('{"type": "FeatureCollection", "features": [\n{"type": "Feature",, }]}', ".geojson",
     r"slide00.geojson: not valid JSON at line 2 column 20"),
    ('{"type": "FeatureCollection", "features": []}', ".geojson", r"slide00.geojson: no classified regions"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", '
     '"coordinates": [[[0, 0], [10]]]}, "properties": {"classification": {"name": "T"}}}]}', ".geojson",
     r"slide00.geojson: feature 0: malformed Polygon coordinates"),
    ("<ASAP_Annotations><Annotations><Annotation PartOfGroup='T'>\n<Coordinates></Annotation>", ".xml",
     r"slide00.xml: not well-formed XML at line 2"),
    ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
     "<Annotations><Annotation Name='&y;'/></Annotations>", ".xml", r"slide00.xml: refused: the XML declares entities"),
    ("<ASAP_Annotations><Annotations><Annotation PartOfGroup='T'><Coordinates><Coordinate Order='0' X='a' Y='1'/>"
     "</Coordinates></Annotation></Annotations></ASAP_Annotations>", ".xml",
     r"slide00.xml: annotation 0 \(unnamed\): X='a' is not a number"),
])
def test_a_bad_annotation_file_is_one_line_naming_it_and_where(slides, tmp_path, text, suffix, fragment):
    root, _ = slides
    s, a = one_slide(root, tmp_path, text, suffix)
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--size", SIZE, "--out", tmp_path / "out")
    assert code == 2 and re.search(fragment, output), output
    assert "Traceback" not in output and output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_unpaired_slides_and_annotations_are_refused_by_name(slides, tmp_path):
    root, _ = slides
    s, a = one_slide(root, tmp_path)
    (a / "slide00.geojson").rename(a / "slide99.geojson")
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--out", tmp_path / "out")
    assert code == 2 and "slide99.geojson: no slide named slide99" in output
    (a / "slide99.geojson").unlink()
    shutil.copy(root / "asap" / "slide01.xml", a / "other.xml")
    (a / "other.xml").rename(a / "slide00.svs.xml")  # QuPath scripts' name.ext.geojson pairs too
    jobs = pair_inputs([s], [a])
    assert jobs[0].annotations == (a / "slide00.svs.xml",)
    dicom = tmp_path / "dicom" / "case7"  # a DICOM slide is a folder of .dcm files, one per level: one slide
    dicom.mkdir(parents=True)
    for level in ("level0.dcm", "level1.dcm"):
        (dicom / level).write_bytes(b"")
    (a / "case7.geojson").write_text("[]")
    assert [(j.slide, j.name) for j in pair_inputs([s, tmp_path / "dicom"], [a])][:2] == [
        (dicom / "level0.dcm", "case7"), (s / "slide00.tif", "slide00")]
    (a / "case7.geojson").unlink()
    code, output = cli(s / "slide00.tif", "--annotations", a / "slide00.svs.xml", "--mpp", MPP, "--out", tmp_path / "o")
    assert code == 2 and "1 slide(s) or patient(s) (slide00): at least 3 are needed" in output
    assert not (tmp_path / "o").exists()
    (a / "x.geojson").write_text("[]")
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--out", tmp_path / "out3")
    assert code == 2 and "x.geojson: no slide named x" in output


def test_a_slide_without_annotations_or_resolution_is_refused_and_an_override_accepted(slides, tmp_path):
    import tifffile

    root, _ = slides
    s, a = one_slide(root, tmp_path)
    shutil.copy(root / "slides" / "slide03.tif", s)
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--out", tmp_path / "out")
    assert code == 2 and "slide03.tif: no annotation file named slide03" in output
    (s / "slide03.tif").unlink()
    plain = s / "slide00.tif"
    pixels = tifffile.imread(plain)  # level 0 only, no resolution tags
    tifffile.imwrite(plain, pixels, tile=(256, 256), photometric="rgb")
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--out", tmp_path / "out")
    assert code == 2 and "slide00.tif: states no plausible resolution" in output and "--mpp-override" in output
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--size", SIZE, "--out", tmp_path / "out",
                       "--mpp-override", "slide00=0.25", "--json", "--pack", tmp_path / "pack")
    assert code == 0, output
    pack = json.loads((tmp_path / "pack" / "pack.json").read_text())  # the tiles decoded into a pack too
    assert pack["classes"] == sorted(CLASSES)
    assert len(pack["files"]) == sum(json.loads((tmp_path / "out" / "report.json").read_text())["splits"].values())
    assert json.loads((tmp_path / "out" / "report.json").read_text())["slides"][0]["tiles_seen"] == 256


def test_other_classes_bad_polygons_and_regions_outside_the_slide_are_said_and_left_out(slides, tmp_path):
    root, _ = slides
    doc = json.loads((root / "geojson" / "slide00.geojson").read_text())
    bowtie = [[[100, 900], [200, 1000], [200, 900], [100, 1000], [100, 900]]]
    doc["features"] += [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": bowtie},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[5000, 5000], [5100, 5000], [5100, 5100],
                                                                           [5000, 5000]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
         "properties": {"objectType": "detection", "classification": {"name": "Lymphocyte"}}}]
    s, a = one_slide(root, tmp_path, json.dumps(doc))
    out = tmp_path / "out"
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--size", SIZE, "--out", out, "--classes", "Tumor,Stroma")
    assert code == 0, output
    flat = " ".join(output.split())
    assert "annotation classes not in --classes, left out: Lymphoid (3 region(s)), Necrosis (3 region(s))" in flat
    assert "feature 4: invalid polygon (Self-intersection" in flat and "repaired" in flat
    assert "feature 5 (Stroma) lies outside the slide" in flat
    slide00 = json.loads((out / "report.json").read_text())["slides"][0]
    assert slide00["name"] == "slide00" and slide00["regions_outside_slide"] == 1
    assert "1 feature(s) of objectType detection left out" in flat and "Point (no area)" in flat
    assert set(tiles_of(out).values()) == {"Tumor", "Stroma"}
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["Stroma", "Tumor"]
    code, output = cli(s, "--annotations", a, "--mpp", MPP, "--size", SIZE, "--out", tmp_path / "strict",
                       "--refuse-invalid")
    assert code == 2 and re.search(r"slide00.geojson: feature 4: invalid polygon \(Self-intersection", output)
    assert not (tmp_path / "strict").exists()


def test_settings_are_checked_in_one_line(slides, tmp_path):
    root, _ = slides
    for args, fragment in ((("--label-rule", "vote"), "--label-rule 'vote': allowed values are centroid, majority, "
                                                      "exclude-mixed"),
                           (("--priority", "Nope"), "--priority names Nope"),
                           (("--mpp", "0"), "--mpp 0.0: microns per pixel")):
        code, output = cli(root / "slides", "--annotations", root / "geojson", "--mpp", MPP, "--out", tmp_path / "o",
                           *args)
        assert code == 2 and fragment in output, output


def test_geojson_reads_a_bare_array_multipolygons_with_holes_and_string_classes(tmp_path):
    path = tmp_path / "a.geojson"
    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]]
    path.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
        [square, hole], [[[20, 0], [30, 0], [30, 10], [20, 0]]]]}, "properties": {"classification": "Tumor"}}]))
    regions = read_annotations(path).regions
    assert len(regions) == 1 and regions[0].name == "Tumor" and regions[0].geometry.area == 100 - 4 + 50
    with pytest.raises(AnnotationError, match="not a GeoJSON Feature"):
        path.write_text('[{"type": "Polygon"}]')
        read_annotations(path)


# -- QuPath both ways --------------------------------------------------------------------------------------------

def test_the_geojson_pathnas_infer_writes_comes_back_as_a_training_set(bundle, slides, tmp_path):
    """A run's tiles (2 um/px, 32 px: 256 level-0 px) read back by the same reader: each tile of the set made from
    them has the class the model gave it (QuPath would let a pathologist correct them in between)."""
    root, _ = slides
    inferred = tmp_path / "inferred"
    code, err = run_infer_here(bundle, root / "slides", "--out", inferred, "--tile-overlap", "0")
    assert code == 0, err
    geojsons = inferred / "model-outputs-geojson"
    predicted = {}
    for path in geojsons.glob("*.geojson"):
        for feature in json.loads(path.read_text())["features"]:
            (x, y), *_ = feature["geometry"]["coordinates"][0]
            predicted[f"{path.stem}_x{round(x)}_y{round(y)}.png"] = feature["properties"]["classification"]["name"]
    out = tmp_path / "from-run"
    code, output = cli(root / "slides", "--annotations", geojsons, "--mpp", 2.0, "--size", 32, "--out", out)
    assert code == 0, output
    kept = tiles_of(out)
    assert kept and all(predicted[name] == label for name, label in kept.items())


# -- the pipeline from slides ------------------------------------------------------------------------------------

def test_the_pipeline_goes_from_annotated_slides_to_a_bundle_at_their_resolution(slides, tmp_path, monkeypatch):
    """--slides --annotations: RUN/tiles is the first stage (skipped when nothing changed); the bundle's
    preprocess.json and WSInfer config.json carry the µm/px the model was trained at."""
    import pathnas.data.tiling as tiling
    from pathnas.pipeline import run_pipeline
    from pathnas.settings import PipelineSettings, validated

    root, _ = slides
    run = tmp_path / "run"
    settings = validated(PipelineSettings, "pipeline", slides=root / "slides", annotations=root / "imagescope",
                         mpp=1.0, pretrain_epochs=1, retrain_epochs=1, iterations=1, formats="onnx", batch_size=16)
    summary = run_pipeline(run, settings, progress=False)
    assert summary["smoke_test_passed"]
    assert summary["report"] == str(run / "report.html") and "chart-pareto" in (run / "report.html").read_text()
    stages = json.loads((run / "stages.json").read_text())
    assert list(stages)[0] == "tiles"
    assert json.loads((run / "bundle" / "preprocess.json").read_text())["mpp"] == 1.0
    assert json.loads((run / "bundle" / "config.json").read_text())["spacing_um_px"] == 1.0
    assert json.loads((run / "bundle" / "labels.json").read_text()) == sorted(CLASSES)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the tiles were cut again, though nothing changed")

    monkeypatch.setattr(tiling, "make_tiles", must_not_run)
    run_pipeline(run, settings, progress=False)
    with pytest.raises(ConfigError, match="--slides and --annotations go together"):
        run_pipeline(tmp_path / "other", validated(PipelineSettings, "pipeline", slides=root / "slides"), progress=False)


def test_the_pipeline_passes_its_label_rule_and_classes_to_the_tiles(slides, tmp_path):
    """pipeline --label-rule majority --classes Tumor,Stroma cuts RUN/tiles as `data tiles` would with them:
    those two classes only (Tumor first: it owns overlaps), tiles kept by the majority rule."""
    from pathnas.pipeline.layout import RunLayout
    from pathnas.pipeline.run import _tiles_first
    from pathnas.settings import PipelineSettings, validated

    root, _ = slides
    settings = validated(PipelineSettings, "pipeline", slides=root / "slides", annotations=root / "geojson",
                         mpp=MPP, label_rule="majority", classes="Tumor, Stroma")
    tiles = _tiles_first(RunLayout(tmp_path / "run"), settings)
    made = json.loads((tiles / "dataset.json").read_text())
    assert made["label_rule"] == "majority" and made["priority"] == ["Tumor", "Stroma"]
    assert set(made["classes"]) == {"Tumor", "Stroma"} and set(tiles_of(tiles).values()) == {"Tumor", "Stroma"}
    with pytest.raises(ValueError, match="--label-rule: Input should be .centroid., .majority. or .exclude-mixed."):
        validated(PipelineSettings, "pipeline", label_rule="nearest")


def test_tiff_tiles_are_the_same_set_and_read_by_the_data_path(slides, tmp_path):
    from pathnas.data import build_loaders

    root, _ = slides
    run(root, tmp_path / "png")
    run(root, tmp_path / "tif", image_format="tiff")
    tifs = {p.name: p.parent.name for p in (tmp_path / "tif").glob("*/*.tif")}
    assert {n.replace(".tif", ".png"): c for n, c in tifs.items()} == tiles_of(tmp_path / "png")
    some = next((tmp_path / "tif").glob("*/*.tif"))
    assert np.array_equal(np.asarray(Image.open(some)),
                          np.asarray(Image.open(tmp_path / "png" / some.parent.name / some.name.replace(".tif", ".png"))))
    assert build_loaders(tmp_path / "tif", SIZE, 4).classes == sorted(CLASSES)


def test_annotations_move_by_openslides_bounds_as_qupath_places_them(tmp_path):
    """QuPath shows an MRXS cropped to OpenSlide's bounds: its (0, 0) is (bounds-x, bounds-y) in the reader's pixels."""
    from types import SimpleNamespace

    from pathnas.data.tiling import slide_origin

    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}, "properties": {"classification": {"name": "Tumor"}}}]))
    mrxs = SimpleNamespace(slide=SimpleNamespace(properties={"openslide.bounds-x": "1200", "openslide.bounds-y": "300"}))
    origin = slide_origin(mrxs)
    assert origin == (1200.0, 300.0) and slide_origin(SimpleNamespace()) == (0.0, 0.0)
    moved = read_annotations(path).shifted(*origin).regions[0].geometry
    assert moved.bounds == (1200, 300, 1210, 310)


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_tiles_go_straight_into_a_pack_with_the_same_pixels_and_splits(slides, tmp_path, task):
    from pathnas.data import build_loaders
    from pathnas.data.shards import open_pack

    root, _ = slides
    run(root, tmp_path / "png", task=task)
    run(root, tmp_path / "pack", task=task, image_format="pack")
    pack = open_pack(tmp_path / "pack")
    folder = json.loads((tmp_path / "png" / "splits.json").read_text())
    assert pack.splits["train"] == [Path(rel).with_suffix("").as_posix() for rel in folder["train"]]
    images = pack.array("images.npy")
    assert sorted(pack.index["files"]) == sorted(rel for s in ("train", "val", "test") for rel in pack.splits[s])
    for name, digest in pack.index["sha256"].items():  # hashed as they were written: the bytes on disk
        assert sha256_file(tmp_path / "pack" / name) == digest
    for i in range(len(pack.index["files"])):  # every row, in the slides' order, is its tile's pixels
        png = tmp_path / "png" / (pack.index["files"][i] + ".png")
        assert np.array_equal(images[i], np.asarray(Image.open(png)).transpose(2, 0, 1))
        if task == "segment":
            mask = tmp_path / "png" / "masks" / (Path(pack.index["files"][i]).name + ".png")
            assert np.array_equal(pack.array("masks.npy")[i], np.asarray(Image.open(mask)))
        else:
            assert pack.classes[int(pack.array("labels.npy")[i])] == Path(pack.index["files"][i]).parent.name
    assert not list((tmp_path / "pack").glob("*/*.png"))  # no image files
    assert build_loaders(tmp_path / "pack", SIZE, 4).task == task
    assert not list((tmp_path / "pack").glob(".tiles/*.raw"))  # the pack holds the rows: not kept twice on disk


def test_a_pack_run_again_redoes_only_the_slides_that_changed_and_equals_a_fresh_one(slides, tmp_path):
    """The slides' rows live only in the finished pack; a re-run takes the unchanged slides' rows back out of it
    instead of reading them again, and its arrays are those of a pack made afresh from the same inputs."""
    from pathnas.data.shards import open_pack

    src = tmp_path / "src"
    shutil.copytree(slides[0], src)
    out = tmp_path / "pack"
    run(src, out, image_format="pack")
    first = open_pack(out).index
    report = run(src, out, image_format="pack")
    assert all(s["skipped"] for s in report["slides"]) and open_pack(out).index == first
    doc = json.loads((src / "geojson" / "slide02.geojson").read_text())
    doc["features"] = [f for f in doc["features"] if f["properties"]["classification"]["name"] != "Stroma"]
    (src / "geojson" / "slide02.geojson").write_text(json.dumps(doc))
    report = run(src, out, image_format="pack")
    assert [s["skipped"] for s in report["slides"]] == [True, True, False, True]
    fresh = tmp_path / "fresh"
    run(src, fresh, image_format="pack")
    again, made = open_pack(out).index, open_pack(fresh).index
    assert again["sha256"] == made["sha256"] and again["files"] == made["files"] and again != first
    assert not list(out.glob(".tiles/*.raw")) and not list(out.glob(".tiles/.*.tmp"))
