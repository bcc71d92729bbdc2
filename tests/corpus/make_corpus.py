"""Generate the bad-input corpus into a folder (nothing large is committed).

    python tests/corpus/make_corpus.py OUTDIR

Every file is small. Real rasters and vectors come from ../shared/data when present.
The crafted pickle's payload would create ``PWNED`` beside it if it ever ran.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine, from_origin

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
CRS = "EPSG:32633"
T = from_origin(500000.0, 5300000.0, 10.0, 10.0)


def _tif(path: Path, data: np.ndarray, **kw: object) -> Path:
    if data.ndim == 2:
        data = data[None]
    prof = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                crs=CRS, transform=T)
    prof.update(kw)  # type: ignore[arg-type]
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    return path


def make(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 3000, size=(3, 48, 40)).astype(np.uint16)
    f: dict[str, Path] = {}
    f["good"] = _tif(out / "good.tif", img)
    cls = (rng.random((48, 40)) > 0.5).astype(np.uint8)
    f["classes"] = _tif(out / "classes.tif", cls, nodata=255)
    f["classes_nocrs"] = _tif(out / "classes_nocrs.tif", cls, nodata=255, crs=None, transform=Affine.identity())
    f["classes_far"] = _tif(out / "classes_far.tif", cls, nodata=255,
                            transform=Affine(10.0, 0.0, 5e13, 0.0, -10.0, 9e13))  # beyond the Earth in UTM
    # rasters that are not what they claim
    full = f["good"].read_bytes()
    (out / "truncated.tif").write_bytes(full[: len(full) // 3])
    f["truncated"] = out / "truncated.tif"
    # a class raster whose first DEFLATE tile is garbage (the rest of the file is fine)
    f["corrupt_tile"] = _tif(out / "corrupt_tile.tif", cls, nodata=255, tiled=True, blockxsize=16, blockysize=16,
                             compress="deflate")
    with rasterio.open(f["corrupt_tile"]) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    raw = bytearray(f["corrupt_tile"].read_bytes())
    raw[off:off + size] = b"\x13" * size
    f["corrupt_tile"].write_bytes(bytes(raw))
    # a VRT stacking bands of different types (Byte, Float32, Byte), as gdalbuildvrt -separate makes them
    parts = [_tif(out / f"part{i}.tif", img[i].astype(dt)) for i, dt in enumerate(("uint8", "float32", "uint8"))]
    bands_xml = "".join(
        f'<VRTRasterBand dataType="{dt}" band="{i + 1}"><SimpleSource><SourceFilename relativeToVRT="1">'
        f'{p.name}</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
        for i, (p, dt) in enumerate(zip(parts, ("Byte", "Float32", "Byte"))))
    with rasterio.open(f["good"]) as ds:
        gt = ", ".join(str(v) for v in ds.transform.to_gdal())
        wkt = ds.crs.to_wkt()
    (out / "mixed_types.vrt").write_text(
        f'<VRTDataset rasterXSize="{img.shape[2]}" rasterYSize="{img.shape[1]}"><SRS>{wkt}</SRS>'
        f'<GeoTransform>{gt}</GeoTransform>{bands_xml}</VRTDataset>')
    f["mixed_types"] = out / "mixed_types.vrt"
    (out / "text.tif").write_text("just some text\n")
    f["text"] = out / "text.tif"
    (out / "page.tif").write_text("<!doctype html><html><body>404 Not Found</body></html>")
    f["html"] = out / "page.tif"
    (out / "empty.tif").write_bytes(b"")
    f["empty"] = out / "empty.tif"
    # odd georeferencing and shapes
    f["nogeo"] = _tif(out / "nogeo.tif", img, crs=None, transform=Affine.identity())
    f["rotated"] = _tif(out / "rotated.tif", img, transform=Affine(8.66, -5.0, 500000.0, -5.0, -8.66, 5300000.0))
    f["sheared"] = _tif(out / "sheared.tif", img, transform=Affine(10.0, 3.0, 500000.0, 0.0, -10.0, 5300000.0))
    f["onepixel"] = _tif(out / "onepixel.tif", img[:, :1, :1])
    f["onepixel_classes"] = _tif(out / "onepixel_classes.tif", cls[:1, :1], nodata=255)
    # declares 100000 x 100000 pixels but stores almost nothing (sparse, no blocks written)
    with rasterio.open(out / "huge_sparse.tif", "w", driver="GTiff", width=100_000, height=100_000, count=3,
                       dtype="uint16", crs=CRS, transform=T, tiled=True, blockxsize=512, blockysize=512,
                       sparse_ok=True, compress="deflate", bigtiff="yes"):
        pass
    f["huge_sparse"] = out / "huge_sparse.tif"
    # data types and values
    f["complex"] = _tif(out / "complex.tif", (img.astype(np.float32) + 1j).astype(np.complex64))
    f["all_nodata"] = _tif(out / "all_nodata.tif", np.zeros((3, 48, 40), np.uint16), nodata=0)
    nan = img.astype(np.float32)
    nan[:, :10, :10] = np.nan
    nan[:, 20:25, 5:9] = np.inf
    nan[1, 30:34, 30:34] = -np.inf
    f["nan_inf"] = _tif(out / "nan_inf.tif", nan)
    f["float_classes"] = _tif(out / "float_classes.tif", rng.random((48, 40)).astype(np.float32))
    f["five_bands"] = _tif(out / "five_bands.tif", rng.integers(0, 3000, size=(5, 48, 40)).astype(np.uint16))
    # checkpoints
    import torch

    from geoseg.models.init import init_checkpoint

    f["model"] = init_checkpoint(out / "model.pt", bands=3, classes=2, base_channels=4, depth=2, tile_size=32,
                                 overlap=8, mean=[1500.0] * 3, std=[900.0] * 3)
    data = f["model"].read_bytes()
    (out / "truncated.pt").write_bytes(data[: len(data) // 2])
    f["truncated_model"] = out / "truncated.pt"
    payload = torch.load(f["model"], weights_only=True)
    other = dict(payload)
    other["geoseg_meta"] = payload["geoseg_meta"].replace('"depth": 2', '"depth": 3')
    torch.save(other, out / "other_arch.pt")
    f["other_arch"] = out / "other_arch.pt"
    future = dict(payload)
    future["geoseg_meta"] = payload["geoseg_meta"].replace('"format_version": 1', '"format_version": 99')
    torch.save(future, out / "future.pt")
    f["future_model"] = out / "future.pt"
    torch.save({"weights": torch.zeros(3)}, out / "plain_torch.pt")
    f["plain_torch"] = out / "plain_torch.pt"
    badjson = dict(payload)
    badjson["geoseg_meta"] = "{not json"
    torch.save(badjson, out / "bad_meta.pt")
    f["bad_meta"] = out / "bad_meta.pt"

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (os.system, (f"touch {out / 'PWNED'}",))

    torch.save({"geoseg_meta": "{}", "state_dict": {}, "evil": Evil()}, out / "evil.pt")
    f["evil_model"] = out / "evil.pt"
    for name, version in (("odd_version", '"abc"'), ("zero_version", "0"), ("list_version", "[1]")):
        odd = dict(payload)
        odd["geoseg_meta"] = payload["geoseg_meta"].replace('"format_version": 1', f'"format_version": {version}')
        torch.save(odd, out / f"{name}.pt")
        f[f"{name}_model"] = out / f"{name}.pt"
    # models from elsewhere: an ONNX export, a text file named .onnx, a torchgeo Lightning checkpoint
    from geoseg.models.onnx_export import export_onnx

    f["model_onnx"] = export_onnx(f["model"], out / "model.onnx")
    (out / "text.onnx").write_text("not a model\n")
    f["text_onnx"] = out / "text.onnx"
    import segmentation_models_pytorch as smp

    net = smp.Unet(encoder_name="mobilenet_v2", encoder_weights=None, in_channels=3, classes=2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"model": "unet", "backbone": "mobilenet_v2", "in_channels": 3, "num_classes": 2,
                                     "model_kwargs": {}},
                "pytorch-lightning_version": "2.5.0"}, out / "lightning.ckpt")
    f["lightning"] = out / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"model": "fcn", "backbone": "resnet18", "in_channels": 3, "num_classes": 2}},
               out / "lightning_fcn.ckpt")
    f["lightning_fcn"] = out / "lightning_fcn.ckpt"
    torch.save({"model.conv.weight": torch.zeros(8, 3, 3, 3)}, out / "tiny_state.pth")
    f["tiny_state"] = out / "tiny_state.pth"
    (out / "latin1.yaml").write_bytes("epochs: 1\noutput: m\xe9.pt\n".encode("latin-1"))
    f["latin1_config"] = out / "latin1.yaml"
    # vectors
    import geopandas as gpd
    from shapely.geometry import Polygon, box

    x0, y0 = 500000.0, 5300000.0 - 480
    g = gpd.GeoDataFrame({"class": ["a", "b"]}, geometry=[box(x0 + 10, y0 + 10, x0 + 150, y0 + 200),
                                                           box(x0 + 200, y0 + 250, x0 + 380, y0 + 460)], crs=CRS)
    g.to_file(out / "labels.gpkg")
    f["labels"] = out / "labels.gpkg"
    g.to_crs("EPSG:4326").to_file(out / "labels_wgs84.gpkg")
    f["labels_other_crs"] = out / "labels_wgs84.gpkg"
    far = g.copy()
    far["geometry"] = g.translate(1e5, 1e5)
    far.to_file(out / "labels_far.gpkg")
    f["labels_far"] = out / "labels_far.gpkg"
    g.iloc[:0].to_file(out / "labels_empty.gpkg")
    f["labels_empty"] = out / "labels_empty.gpkg"
    bowtie = Polygon([(x0 + 10, y0 + 10), (x0 + 200, y0 + 200), (x0 + 200, y0 + 10), (x0 + 10, y0 + 200)])
    gpd.GeoDataFrame({"class": ["a", "b", "a"]},
                     geometry=[bowtie, box(x0 + 250, y0 + 250, x0 + 380, y0 + 460), Polygon()],
                     crs=CRS).to_file(out / "labels_invalid.gpkg")
    f["labels_invalid"] = out / "labels_invalid.gpkg"
    nan_ring = Polygon([(x0 + 10, y0 + 10), (float("nan"), y0 + 10), (x0 + 200, y0 + 200), (x0 + 10, y0 + 200)])
    gpd.GeoDataFrame({"class": ["a", "b", "a"], "id": [0, 1, 0]},
                     geometry=[nan_ring, box(x0 + 250, y0 + 250, x0 + 380, y0 + 460), box(x0 + 10, y0 + 10, x0 + 150,
                                                                                          y0 + 200)],
                     crs=CRS).to_file(out / "labels_nan.gpkg")
    f["labels_nan"] = out / "labels_nan.gpkg"
    g.set_crs(None, allow_override=True).to_file(out / "labels_nocrs.shp")
    for ext in (".prj",):
        (out / f"labels_nocrs{ext}").unlink(missing_ok=True)
    f["labels_nocrs"] = out / "labels_nocrs.shp"
    shp = SHARED / "scikit_eo_l8" / "endmembers.shp"
    if shp.exists():
        for ext in (".shp", ".shx", ".dbf"):
            shutil.copy(shp.with_suffix(ext), out / f"endmembers{ext}")
        f["endmembers_nocrs"] = out / "endmembers.shp"
    f["readonly_dir"] = Path("/proc")  # refuses new files even to root
    return f


if __name__ == "__main__":
    for k, v in make(Path(sys.argv[1])).items():
        print(f"{k}: {v}")
