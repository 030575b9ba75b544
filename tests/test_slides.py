"""Slides as they come from scanners, in the base runtime: JPEG / JPEG 2000 tiles, planar RGB, pyramids,
stated resolutions, damaged headers; read at the resolution the model was trained at; outputs of two
inputs with the same file name kept apart. The slides are written by bundle_helpers.write_slide."""
from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

# bundle: trained on the synthetic data at 32 px, 2.0 um per pixel (preprocess.json), tiles of 32 px
from bundle_helpers import GLASS, PINK, bundle, read_csv, run_infer_here, write_slide  # noqa: F401 (a fixture)
from pathnas.deploy.images import InputError, Level, choose_level, open_image, tile_grid

HAS_OPENSLIDE = importlib.util.find_spec("openslide") is not None


def _colours(source, y: int, x: int, side: int = 64) -> np.ndarray:
    return source.read_region(y, x, side, side).reshape(-1, 3).mean(0)


@pytest.mark.parametrize("options, tolerance", [
    (dict(compression="jpeg"), 6), (dict(compression="jpeg2000"), 1), (dict(compression="zlib"), 1),
    (dict(planar=True), 1), (dict(planar=True, compression="zlib"), 1),
])
def test_compressed_and_planar_tiffs_read_as_colour(tmp_path, options, tolerance):
    """What scanners write: JPEG and JPEG 2000 tiles (imagecodecs), planar-separate RGB (once read as grey)."""
    path = write_slide(tmp_path / "slide.tif", side=512, tile=128, tissue=0.5, **options)
    source = open_image(path)
    assert (source.height, source.width) == (512, 512) and source.note == "" and source.mpp is None
    assert np.abs(_colours(source, 16, 16) - PINK).max() < tolerance + 3  # tissue: pink, not grey
    assert np.abs(_colours(source, 300, 400) - GLASS).max() < tolerance
    if options.get("compression") != "jpeg":  # lossless: every region equals the same crop of the whole
        whole = tifffile.imread(path)
        whole = np.moveaxis(whole, 0, -1) if options.get("planar") else whole
        for y, x in tile_grid(512, 512, 96, 0.25, source.block):
            assert np.array_equal(source.read_region(y, x, 96, 96), whole[y:y + 96, x:x + 96]), (y, x)
    assert len(source.reader(0)._cache) <= 16  # a few segments, however large the slide
    source.close()


def _patch_size(path: Path, side: int) -> None:
    """Rewrite ImageWidth and ImageLength in place, as a damaged or hostile header would say."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        places = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for offset, dtype in places:
        struct.pack_into("<H" if dtype == 3 else "<I", data, offset, side)
    path.write_bytes(bytes(data))


def test_a_header_the_file_cannot_back_is_a_clear_error(bundle, tmp_path):
    huge = write_slide(tmp_path / "huge.tif", side=512, tile=256)
    _patch_size(huge, 100_000)
    with pytest.raises(InputError, match=r"huge.tif: the TIFF header says 100000x100000 px in 152881 tiles of "
                                         r"256x256, but the file lists 4: damaged or truncated"):
        open_image(huge)
    truncated = write_slide(tmp_path / "truncated.tif", side=512, tile=256)
    truncated.write_bytes(truncated.read_bytes()[:-50_000])
    with pytest.raises(InputError, match="truncated.tif: tile data lies beyond the end of the file"):
        open_image(truncated)
    strip = tmp_path / "strip.tif"  # one strip of 12000 x 12000 px: 412 MiB decoded at once
    tifffile.imwrite(strip, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    _patch_size(strip, 12_000)
    with pytest.raises(InputError, match="over 256 MiB; save the slide as a tiled TIFF|lists"):
        open_image(strip)
    code, err = run_infer_here(bundle, huge, truncated, "--out", tmp_path / "r.csv")
    assert code == 1 and "Traceback" not in err and "IndexError" not in err
    rows = {Path(r["input"]).name: r for r in read_csv(tmp_path / "r.csv")}
    assert "damaged or truncated" in rows["huge.tif"]["error"] and "beyond the end" in rows["truncated.tif"]["error"]


def test_sparse_tiles_are_glass(tmp_path):
    """A tile with no data (byte count 0: sparse, as some scanners leave empty glass) reads as white."""
    path = write_slide(tmp_path / "sparse.tif", side=256, tile=128, tissue=0.5)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["TileByteCounts"]
        offset, size = tag.valueoffset, {3: 2, 4: 4, 16: 8}[tag.dtype]
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = bytes(size)  # the first tile (tissue) becomes sparse
    path.write_bytes(bytes(data))
    source = open_image(path)
    assert (source.read_region(0, 0, 128, 128) == 255).all()
    assert np.abs(source.read_region(128, 0, 64, 64).reshape(-1, 3).mean(0) - PINK).max() < 4


def test_a_missing_codec_names_the_package_to_install(tmp_path, monkeypatch):
    path = write_slide(tmp_path / "j.tif", side=256, tile=128, compression="jpeg")

    def no_codec(self, *args, **kwargs):
        raise ValueError("<COMPRESSION.JPEG: 7> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "decode", no_codec)
    with pytest.raises(InputError, match=r"j.tif: .*imagecodecs.*pip install imagecodecs"):
        open_image(path)


@pytest.mark.parametrize("pyramid", ["subifds", "pages"])
def test_pyramid_levels_and_the_stated_resolution(tmp_path, pyramid):
    path = write_slide(tmp_path / "p.tif", side=1024, tile=128, tissue=0.5, levels=3, pyramid=pyramid, mpp=0.25)
    source = open_image(path)
    assert source.levels == [Level(1024, 1024, 1.0), Level(512, 512, 2.0), Level(256, 256, 4.0)]
    assert source.mpp == pytest.approx(0.25) and "TIFF resolution tags" in source.mpp_source
    level = source.reader(2)
    assert (level.height, level.width) == (256, 256)
    assert np.abs(level.read_region(0, 0, 32, 32).reshape(-1, 3).mean(0) - PINK).max() < 4
    assert (level.read_region(0, 200, 32, 32) == GLASS).all()
    source.close()


def test_choose_level_takes_the_coarsest_level_that_is_not_coarser_than_the_model():
    levels = [Level(4000, 4000, 1.0), Level(1000, 1000, 4.0), Level(250, 250, 16.0)]
    assert choose_level(levels, 0.25, 1.0) == (1, 1.0)  # exactly level 1
    assert choose_level(levels, 0.25, 2.0) == (1, 2.0)  # level 1, then halve
    assert choose_level(levels, 0.25, 4.0) == (2, 1.0)
    assert choose_level(levels, 0.25, 0.5) == (0, 2.0)
    assert choose_level(levels, 0.25, 0.2) == (0, 0.8)  # coarser slide than model: enlarged (and said)
    rounded = [levels[0], Level(999, 999, 4.004), levels[2]]  # a level's size rounded: its downsample a bit off
    assert choose_level(rounded, 0.25, 1.0) == (1, pytest.approx(4 / 4.004))
    assert choose_level(levels, None, 1.0) == (0, 1.0) and choose_level(levels, 0.25, None) == (0, 1.0)


def test_where_the_resolution_is_read_from(tmp_path):
    svs = tmp_path / "a.tif"  # Aperio's description
    tifffile.imwrite(svs, np.zeros((64, 64, 3), np.uint8), photometric="rgb", tile=(32, 32),
                     description="Aperio Image Library v12.0.0\n64x64 [0,0 64x64] (32x32) JPEG Q=70|AppMag = 20|MPP = 0.4990")
    assert open_image(svs).mpp == pytest.approx(0.499)
    ome = tmp_path / "b.ome.tif"
    tifffile.imwrite(ome, np.zeros((64, 64, 3), np.uint8), photometric="rgb", tile=(32, 32),
                     metadata={"axes": "YXS", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"})
    source = open_image(ome)
    assert source.mpp == pytest.approx(0.25) and source.mpp_source == "OME-XML PhysicalSizeX"
    screen = tmp_path / "c.tif"  # what image editors write: 72 dpi, no scanner's resolution
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(screen, dpi=(72, 72))
    source = open_image(screen)
    assert source.mpp is None and "says 352.8 µm/px, not a scanner's resolution (ignored)" in source.mpp_source
    png = tmp_path / "d.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png, dpi=(50800, 50800))  # 0.5 um per pixel
    assert open_image(png).mpp == pytest.approx(0.5, rel=1e-3)


def _tiled_row(bundle: Path, slide: Path, tmp_path: Path, *extra) -> tuple[dict, str]:
    code, err = run_infer_here(bundle, slide, "--out", tmp_path / f"{slide.stem}.csv", "--min-tissue", "0.5", *extra)
    assert code == 0, err
    return read_csv(tmp_path / f"{slide.stem}.csv")[0], err


@pytest.mark.parametrize("pyramid", ["subifds", "pages"])
def test_slides_are_read_at_the_training_resolution(bundle, tmp_path, pyramid):
    """The model saw 32 px at 2.0 um/px. A 0.5 um/px slide is read at its 4x level (0.5 x 4 = 2.0) in
    32 px tiles; tile positions are in level-0 pixels."""
    slide = write_slide(tmp_path / "fine.tif", side=2048, tile=128, tissue=0.5, levels=3, mpp=0.5, pyramid=pyramid)
    row, err = _tiled_row(bundle, slide, tmp_path)
    assert row["level"] == "2" and float(row["read_mpp"]) == pytest.approx(2.0) and row["tile_px"] == "32"
    assert "model trained at 2 µm/px: level 2 of 3 (2 µm/px), tiles of 32 px" in row["note"]
    assert int(row["tiles"]) == len(list(tile_grid(512, 512, 32, 0.25)))
    tiles = read_csv(Path(row["tile_csv"]))
    assert {int(t["x"]) % 4 for t in tiles} == {0} and max(int(t["x"]) for t in tiles) < 1024  # left half, level 0 px
    assert 0.45 < int(row["tissue_tiles"]) / int(row["tiles"]) < 0.55


def test_a_slide_without_a_pyramid_level_is_downsampled_and_one_without_resolution_says_so(bundle, tmp_path):
    one_level = write_slide(tmp_path / "one.tif", side=1024, tile=128, tissue=0.5, mpp=1.0)  # 2x too fine, no level
    row, _ = _tiled_row(bundle, one_level, tmp_path)
    assert row["level"] == "0" and row["tile_px"] == "64" and float(row["read_mpp"]) == pytest.approx(2.0)
    coarse = write_slide(tmp_path / "coarse.tif", side=512, tile=128, tissue=0.5, mpp=4.0)
    row, _ = _tiled_row(bundle, coarse, tmp_path)
    assert row["tile_px"] == "16" and "ENLARGED x2.00: the image is coarser than the training data" in row["note"]
    unknown = write_slide(tmp_path / "unknown.tif", side=512, tile=128, tissue=0.5)
    row, err = _tiled_row(bundle, unknown, tmp_path)
    assert row["level"] == "0" and row["tile_px"] == "32" and row["read_mpp"] == ""
    assert "the image states no resolution: read at level 0 (full resolution)" in row["note"]
    assert "unknown.tif: the image states no resolution" in err


@pytest.mark.skipif(not HAS_OPENSLIDE, reason="openslide-python is not installed")
def test_openslide_formats_take_the_same_level(bundle, tmp_path):
    """OpenSlide reads the slide (its generic TIFF reader takes reduced-resolution pages) with its
    openslide.mpp-x; the choice of level and tile is the same as for tifffile."""
    from pathnas.deploy.images import OpenSlideSource

    slide = write_slide(tmp_path / "fine.svs", side=2048, tile=128, tissue=0.5, levels=3, mpp=0.5, pyramid="pages")
    source = open_image(slide)
    assert isinstance(source, OpenSlideSource) and source.mpp == pytest.approx(0.5)
    assert [level.downsample for level in source.levels] == [1.0, 2.0, 4.0]
    assert np.array_equal(source.reader(2).read_region(0, 0, 32, 32),
                          open_image(tmp_path / write_slide(tmp_path / "same.tif", side=2048, tile=128, tissue=0.5,
                                                            levels=3, mpp=0.5, pyramid="pages")).reader(2)
                          .read_region(0, 0, 32, 32))
    source.close()
    row, _ = _tiled_row(bundle, slide, tmp_path)
    assert row["level"] == "2" and row["tile_px"] == "32" and "OpenSlide (openslide.mpp-x)" in row["note"]


def test_inputs_with_the_same_file_name_never_share_an_output(bundle, tmp_path):
    from pathnas.deploy.infer import output_names

    first, second = tmp_path / "a" / "slide.tif", tmp_path / "b" / "slide.tif"
    for path, tissue in ((first, 0.25), (second, 0.75)):
        path.parent.mkdir()
        write_slide(path, side=512, tile=128, tissue=tissue)
    outputs = []
    for order in ((first, second), (second, first)):
        code, err = run_infer_here(bundle, *order, "--out", tmp_path / "r.csv")
        assert code == 0, err
        rows = {r["input"]: r for r in read_csv(tmp_path / "r.csv")}
        outputs.append({p: (rows[str(p)]["tile_csv"], rows[str(p)]["heatmap"]) for p in (first, second)})
    assert outputs[0] == outputs[1]  # the same names whatever the order
    files = [f for pair in outputs[0].values() for f in pair]
    assert len(set(files)) == 4 and all(Path(f).exists() for f in files)
    shares = {p: int(read_csv(tmp_path / "r.csv")[i]["tissue_tiles"]) for i, p in enumerate(sorted((first, second)))}
    assert shares[first] < shares[second]
    assert [len(read_csv(Path(outputs[0][p][0]))) for p in (first, second)] == [shares[first], shares[second]]
    names = output_names([Path("x/a.png"), Path("y/a.png"), Path("z/a-2.png"), Path("w/b.png")])
    assert len(set(names.values())) == 4 and names[Path("w/b.png")] == "b" and names[Path("z/a-2.png")] == "a-2"
