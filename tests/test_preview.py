"""PNG quicklooks and the default RGB band choice."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from conftest import shared_file
from geoseg.cli import main
from geoseg.errors import UsageError
from geoseg.preview import default_rgb, write_preview


@pytest.mark.parametrize("names,expected", [
    (("B1_dn", "B2_dn", "B3_dn", "B4_dn", "B5_dn", "B6_dn", "B7_dn"), [3, 2, 1]),  # Landsat TM
    (("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"), [4, 3, 2]),  # Sentinel-2
    (("nir", "Red", "green", "blue"), [2, 3, 4]),
    ((None, None, None, None), [1, 2, 3]),
])
def test_default_rgb(make_raster, names, expected):
    p = make_raster(np.zeros((len(names), 4, 4), np.uint8))
    with rasterio.open(p, "r+") as ds:
        for i, n in enumerate(names, start=1):
            if n:
                ds.set_band_description(i, n)
    with rasterio.open(p) as ds:
        assert default_rgb(ds) == expected


def test_preview_of_real_scene(tmp_path):
    from geoseg.classes import ClassSchema

    img = shared_file("rstoolbox_brazil/lsat_tm_1988.tif")
    with rasterio.open(img) as ds:
        data = ds.read()
        prof = ds.profile
    # a class raster derived from the image itself: water / forest / other by simple thresholds
    cls = np.where(data[3] < 40, 0, np.where(data[2] < 30, 1, 2)).astype(np.uint8)
    cls[data[0] == 255] = 255
    schema = ClassSchema.from_names(["water", "forest", "other"])
    prof.update(count=1, dtype="uint8", nodata=255)
    cpath = tmp_path / "c.tif"
    with rasterio.open(cpath, "w", **prof) as ds:
        ds.write(cls, 1)
        ds.update_tags(geoseg_classes=schema.to_json())
    out = write_preview(cpath, tmp_path / "p.png", image=img, max_side=300)
    from matplotlib.image import imread

    pic = imread(out)
    assert pic.ndim == 3 and pic.shape[0] > 100 and pic.shape[1] > 100
    assert pic[..., :3].std() > 0.05  # not blank
    with pytest.raises(Exception, match="exists"):
        write_preview(cpath, out, image=img)
    with pytest.raises(UsageError, match="`rgb` band 9"):
        write_preview(cpath, tmp_path / "q.png", image=img, rgb=[9, 2, 1])
    assert not (tmp_path / "q.png").exists()


def test_preview_cli(tmp_path, capsys):
    src = shared_file("usda_cdl_kansas/2021_30m_cdls.tif")
    main(["preview", str(src), "-o", str(tmp_path / "cdl.png"), "--max-side", "256"])
    assert (tmp_path / "cdl.png").stat().st_size > 1000
    assert "preview:" in capsys.readouterr().out


@pytest.mark.parametrize("max_side", [256, 1200, 2000])
def test_max_side_is_the_longest_side_of_the_picture(tmp_path, max_side):
    """--max-side only set how finely the raster was sampled: the picture stayed ~1000 x 620 whatever it said."""
    out = write_preview(shared_file("usda_cdl_kansas/2021_30m_cdls.tif"), tmp_path / "p.png", max_side=max_side)
    with rasterio.open(out) as png:
        assert max(png.width, png.height) in (max_side - 1, max_side)


def test_a_preview_not_named_png_is_refused(tmp_path):
    """-o x.jpg wrote PNG bytes into a .jpg."""
    with pytest.raises(UsageError, match="name it .png"):
        write_preview(shared_file("usda_cdl_kansas/2021_30m_cdls.tif"), tmp_path / "p.jpg")
    assert not (tmp_path / "p.jpg").exists()


def test_preview_never_replaces_an_input(make_raster, tmp_path):
    """-o equal to an input is refused even with --overwrite (issue 21: it replaced the input)."""
    from geoseg.errors import RasterWriteError

    cls = make_raster(np.arange(16, dtype=np.uint8).reshape(4, 4) % 3, name="c.tif", nodata=255)
    img = make_raster(np.ones((3, 4, 4), np.uint16), name="i.tif")
    before = {p: p.read_bytes() for p in (cls, img)}
    for dest in (cls, img):
        with pytest.raises(RasterWriteError, match="same as an input"):
            write_preview(cls, dest, image=img, overwrite=True)
    assert {p: p.read_bytes() for p in (cls, img)} == before


@pytest.mark.parametrize("shape", [(3000, 1), (1, 3000)])
def test_preview_of_a_one_pixel_wide_raster_is_bounded(make_raster, tmp_path, shape):
    """A 1 x N raster asked matplotlib for a figure of ~1e6 pixels a side, 5-9 GB (issue 21)."""
    cls = make_raster((np.arange(shape[0] * shape[1]) // 7 % 3).astype(np.uint8).reshape(shape), nodata=255)
    out = write_preview(cls, tmp_path / "p.png")
    with rasterio.open(out) as png:
        assert png.width <= 1600 and png.height <= 1600


def test_nodata_value_shows_an_undeclared_collar_as_nodata(make_raster, tmp_path):
    """An image whose zero collar is not declared: black without --nodata, nodata grey with nodata=0."""
    from matplotlib.image import imread

    rng = np.random.default_rng(1)
    img = rng.integers(100, 3000, size=(3, 80, 80)).astype(np.uint16)
    img[:, :, :30] = 0
    image = make_raster(img, name="img.tif")
    cls = np.full((80, 80), 255, np.uint8)
    cls[:, 30:] = 1
    classes = make_raster(cls, name="cls.tif", nodata=255)
    grey = []
    for name, nodata in (("a.png", None), ("b.png", 0)):
        pic = imread(write_preview(classes, tmp_path / name, image=image, max_side=200, image_nodata=nodata))[..., :3]
        grey.append(int((np.abs(pic - 0.92) < 0.01).all(axis=-1).sum()))
    assert grey[1] > grey[0] + 1000  # the collar turned to the nodata grey
