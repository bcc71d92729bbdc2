"""``vectorize``: class raster -> polygons with attributes, streamed band by band. Torch-free."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from geoseg.errors import UsageError
from geoseg.io.atomic import destination_lock
from geoseg.io.gdalcache import MIN_CACHE_BYTES, block_cache
from geoseg.io.heap import release_free_heap
from geoseg.io.threads import check_stop, prefetch_in_thread
from geoseg.vector.measure import Measurer
from geoseg.vector.post import EmitMaskStore, coverage_simplify, fill_holes as _fill_holes, parse_tolerance
from geoseg.vector.parallel import auto_workers, band_polygons
from geoseg.vector.seams import Chunk, SeamMerger
from geoseg.vector.source import DEFAULT_BAND_PIXELS, ClassSource, ConfidenceSource, parse_names

#: with ``simplify``, final polygons are collected up to this many vertices before one
#: ``coverage_simplify`` call (its memory bound); edges between polygons of different
#: collections are kept exactly as they are
SIMPLIFY_CHUNK_VERTICES = 1 << 21

#: attribute columns, in order (``confidence_mean`` only with a probability raster)
COLUMNS = ("id", "class_id", "class_name", "area_m2", "perimeter_m", "confidence_mean")


@dataclass
class VectorProgress:
    """Passed to ``on_progress`` after each band."""

    done: int  #: rows done
    total: int  #: raster rows
    polygons: int  #: polygons released so far
    seconds: float


@dataclass
class VectorizeReport:
    """What :func:`vectorize` wrote."""

    path: Path | None
    format: str | None
    polygons: int
    class_counts: dict[int, int]
    width: int
    height: int
    band_rows: int
    seconds: float
    crs: str | None
    simplify: str
    empty: bool
    holes_filled: int = 0
    dropped_small: int = 0
    max_open_groups: int = 0
    warnings: list[str] = field(default_factory=list)


def _band_rows(band_rows: int | None, width: int, sieve: int | None) -> int:
    if band_rows is None:
        rows = max(16, DEFAULT_BAND_PIXELS // max(width, 1))
        return max(rows, 2 * int(sieve or 0))
    if int(band_rows) < 1:
        raise UsageError(f"band_rows must be >= 1, got {band_rows}")
    return int(band_rows)


def _check_positive(name: str, v: float | None) -> None:
    if v is not None and not (np.isfinite(v) and v >= 0):
        raise UsageError(f"`{name}` must be a non-negative number, got {v}")


class _Plan:
    """Everything resolved before the first band is read."""

    def __init__(self, src: ClassSource, *, classes: Sequence[int | str] | None, boundary_class: int | str | None,
                 min_area: float | None, fill_holes: float | None, simplify: Any, sieve: int | None,
                 band_rows: int | None, workers: int | None = None, executor: Any = None) -> None:
        self.src = src
        if workers is not None and workers < 0:
            raise UsageError(f"`workers` must be >= 0 (0: automatic), got {workers}")
        self.workers = 1 if workers is None else auto_workers(src.width, src.height) if workers == 0 else int(workers)
        self.executor = executor
        self.keep = None if classes is None else [src.resolve_class(c, "classes") for c in classes]
        self.boundary = None if boundary_class is None else src.resolve_class(boundary_class, "boundary_class")
        if self.keep is not None and self.boundary is not None and self.boundary in self.keep:
            raise UsageError(f"`boundary_class` {self.boundary} is also in `classes`; boundary pixels are never "
                             "polygons, drop it from `classes`")
        _check_positive("min_area", min_area)
        _check_positive("fill_holes", fill_holes)
        if sieve is not None and (int(sieve) != sieve or sieve < 0):
            raise UsageError(f"`sieve` must be a whole number of pixels >= 0, got {sieve}")
        self.min_area = min_area or 0.0
        self.fill_holes = fill_holes or 0.0
        self.sieve = int(sieve) if sieve else None
        t = src.transform
        self.pixel_size = float(np.sqrt(abs(t.a * t.e - t.b * t.d)))
        self.simplify_px, self.simplify_desc = parse_tolerance(simplify, self.pixel_size)
        self.band_rows = _band_rows(band_rows, src.width, self.sieve)
        #: GDAL block cache for one band read (set again by ``vectorize`` once a probability
        #: raster is open: its blocks count too)
        self.cache_bytes = _cache_bytes(src.ds, self.band_rows, self.sieve)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.measurer = Measurer(src.crs, src.transform, src.width, src.height)
        self.warnings = [str(w.message) for w in caught]


def _batches(plan: _Plan, conf_src: ConfidenceSource | None, report: VectorizeReport,
             on_progress: Callable[[VectorProgress], None] | None, t0: float) -> Iterator[Any]:
    """Yield one pyarrow RecordBatch of final polygons (CRS coordinates, WKB) per band."""

    src = plan.src
    merger = SeamMerger(src.width, src.height, want_confidence=conf_src is not None)
    store = EmitMaskStore(src.width, src.height) if plan.fill_holes > 0 else None
    next_id = 1
    pending: list[Chunk] = []
    pending_vertices = 0
    try:
        for bp in band_polygons(src, plan.band_rows, sieve=plan.sieve, keep=plan.keep, boundary=plan.boundary,
                                conf=conf_src, keep_emit=store is not None, workers=plan.workers,
                                executor=plan.executor,
                                cache_bytes=plan.cache_bytes):
            check_stop()  # a Ctrl-C: each stage of a band takes up to seconds
            if store is not None:
                assert bp.emit_bits is not None  # asked for (keep_emit)
                store.write_bits(bp.r0, bp.emit_bits)
            chunk = merger.merge(bp)
            report.max_open_groups = merger.max_open
            band = bp
            last = band.r1 >= src.height
            if plan.simplify_px > 0:
                # coverage simplification keeps each chunk's outer boundary, so simplify
                # bigger chunks: fewer kept (unsimplified) edges, memory still bounded
                pending.append(chunk)
                pending_vertices += len(chunk.rag.coords)
                if pending_vertices < SIMPLIFY_CHUNK_VERTICES and not last:
                    continue
                chunk = Chunk.concat(pending)
                pending, pending_vertices = [], 0
            check_stop()
            batch, next_id = _to_batch(plan, chunk, store, report, next_id, conf_src is not None)
            done = band.r1
            del bp, band, chunk
            release_free_heap()  # this band's shapes objects and merge temporaries
            if on_progress is not None:
                on_progress(VectorProgress(done, src.height, next_id - 1, time.perf_counter() - t0))
            if batch is not None:
                yield batch
    finally:
        if store is not None:
            store.close()


def _to_batch(plan: _Plan, chunk: Chunk, store: EmitMaskStore | None, report: VectorizeReport, next_id: int,
              with_conf: bool) -> tuple[Any, int]:
    import pyarrow as pa

    if len(chunk) == 0:
        return None, next_id
    rag, cls = chunk.rag, chunk.class_id
    m = plan.measurer
    keep = np.ones(len(rag), bool)
    if plan.min_area > 0:
        area, _ = m.area_perimeter(rag)
        keep = area >= plan.min_area
        report.dropped_small += int((~keep).sum())
    if not keep.all():
        rag, cls = rag.take(keep), cls[keep]
        cs = chunk.conf_sum[keep] if chunk.conf_sum is not None else None
        cn = chunk.conf_n[keep] if chunk.conf_n is not None else None
    else:
        cs, cn = chunk.conf_sum, chunk.conf_n
    if len(rag) == 0:
        return None, next_id
    if store is not None:
        rag, filled = _fill_holes(rag, m.ring_areas_m2(rag), plan.fill_holes, store)
        report.holes_filled += filled
    if plan.simplify_px > 0:
        rag = coverage_simplify(rag, plan.simplify_px)
    rag_crs = m.to_crs(rag)
    area, perim = m.area_perimeter(rag, rag_crs)
    n = len(rag)
    ids = np.arange(next_id, next_id + n, dtype=np.int64)
    uniq, inv = np.unique(cls, return_inverse=True)
    names = pa.DictionaryArray.from_arrays(pa.array(inv.astype(np.int32)),
                                           pa.array([plan.src.name_of(int(u)) for u in uniq]))
    for u, c in zip(uniq.tolist(), np.bincount(inv).tolist()):
        report.class_counts[u] = report.class_counts.get(u, 0) + c
    buf, off = rag_crs.to_wkb()
    geom = pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(off), pa.py_buffer(buf)])
    cols = [pa.array(ids), pa.array(cls.astype(np.int32)), names.cast(pa.string()), pa.array(area),
            pa.array(perim)]
    if with_conf:
        assert cs is not None and cn is not None  # a confidence source gives both
        with np.errstate(invalid="ignore", divide="ignore"):
            cm = np.where(cn > 0, cs / np.maximum(cn, 1), np.nan)
        cols.append(pa.array(cm, mask=~np.isfinite(cm)))
    cols.append(geom)
    return pa.RecordBatch.from_arrays(cols, schema=arrow_schema(with_conf)), next_id + n


def arrow_schema(with_confidence: bool) -> Any:
    """Arrow schema of the polygon table (geometry: WKB in the ``geometry`` column)."""
    import pyarrow as pa

    fields = [pa.field("id", pa.int64()), pa.field("class_id", pa.int32()), pa.field("class_name", pa.string()),
              pa.field("area_m2", pa.float64()), pa.field("perimeter_m", pa.float64())]
    if with_confidence:
        fields.append(pa.field("confidence_mean", pa.float64()))
    fields.append(pa.field("geometry", pa.large_binary()))
    return pa.schema(fields)


def vectorize(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[int | str] | None = None,
    class_names: dict[int, str] | Sequence[str] | str | None = None,
    min_area: float | None = None,
    sieve: int | None = None,
    fill_holes: float | None = None,
    simplify: float | str | None = None,
    boundary_class: int | str | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    band_rows: int | None = None,
    workers: int | None = None,
    on_progress: Callable[[VectorProgress], None] | None = None,
    executor: Any = None,
    nodata: float | None = None,
) -> Any:
    """Polygonize a class raster of any size into valid, non-overlapping polygons.

    The raster is read in row bands of ``band_rows`` rows; each band is polygonized with
    ``rasterio.features.shapes`` (4-connected, nodata masked) and polygons crossing band
    seams are merged exactly, so the result equals one whole-raster polygonization. Memory
    is one band plus the polygons still open across the current seam (plus, when writing,
    the polygons of one band); it does not grow with the raster height, and with the default
    ``band_rows`` a band holds about 2 M pixels whatever the width.

    Args:
        source: class raster (band 1; integer class ids; nodata/mask pixels are skipped).
        output: file to write (format from the extension: .gpkg, .shp, .geojson, .parquet,
            .fgb). None returns a GeoDataFrame instead (which holds every polygon).
        classes: keep only these classes (ids or names).
        class_names: ``{id: name}``, ``"1=corn,5=soy"`` or a list of ``ID=NAME``; overrides
            the raster's ``geoseg_classes`` tag. Unnamed ids are called ``class_<id>``.
        min_area: drop polygons smaller than this, m² (equal-area for geographic CRSs).
        sieve: merge regions smaller than this many pixels into their largest neighbour
            before polygonizing (``rasterio.features.sieve``, 4-connected, per band with a
            halo of ``sieve`` rows).
        fill_holes: remove holes smaller than this, m², when no polygon lies in them.
        simplify: coverage simplification tolerance, CRS units (number) or pixels (``"1.5px"``).
        boundary_class: class of field boundaries in 3-class field models: its pixels are
            not polygons and separate the fields on either side.
        probabilities: probability raster from ``geoseg infer`` (last band ``confidence``);
            adds ``confidence_mean`` (0-1).
        overwrite: replace an existing ``output``.
        band_rows: rows per band (default: about 2 M pixels per band, at least 16 rows).
        workers: processes polygonizing bands in parallel (``spawn``ed; call from under
            ``if __name__ == "__main__":`` in scripts). Default 1 (in-process); 0 picks 1 below
            16 M pixels, else one per CPU beyond the two that the merge and the writer
            process use, up to 4, and 1 when fewer than 2 are left (what the CLI does). The seam merge and the
            writing stay in this process; results are identical whatever the count.
        on_progress: called after each band with a :class:`VectorProgress` (from a worker thread).
        executor: polygonize the bands there instead: anything with ``submit(fn, *args)`` returning
            futures, e.g. a ``dask.distributed.Client`` (its workers must see ``source``); ``workers``
            then says how many it runs at once. The merge stays here; the polygons are the same.
        nodata: a class value to treat as nodata beside the raster's own (an undeclared collar, e.g. 0):
            no polygons there, and the sieve does not merge into it.

    Returns:
        A GeoDataFrame when ``output`` is None, else a :class:`VectorizeReport`.

    Raises:
        GeosegError: bad raster, option or output; nothing is left at the destination.
    """
    from geoseg.export import check_output, write_batches
    from geoseg.styles import vector_qml

    t0 = time.perf_counter()
    names = parse_names(class_names)
    dest = None
    if output is not None:
        dest = check_output(output, overwrite=overwrite, inputs=[source] + ([probabilities] if probabilities else []))
    with ClassSource(source, names, nodata=nodata) as src:
        plan = _Plan(src, classes=classes, boundary_class=boundary_class, min_area=min_area,
                     fill_holes=fill_holes, simplify=simplify, sieve=sieve, band_rows=band_rows, workers=workers,
                     executor=executor)
        conf_src = ConfidenceSource(probabilities, src) if probabilities is not None else None
        if conf_src is not None:
            plan.cache_bytes += _cache_bytes(conf_src.ds, plan.band_rows, None, bands=[conf_src.band])
        crs_wkt = src.crs.to_wkt() if src.crs is not None else None
        report = VectorizeReport(path=Path(output) if output is not None else None,
                                 format=dest[1] if dest else None, polygons=0, class_counts={},
                                 width=src.width, height=src.height, band_rows=plan.band_rows, seconds=0.0,
                                 crs=crs_wkt, simplify=plan.simplify_desc, empty=True,
                                 warnings=list(plan.warnings))
        try:
            # one run at a time per destination: a second one gets a clear error, not a silent replacement
            with destination_lock(dest[0] if dest else None), block_cache(plan.cache_bytes):
                batches = prefetch_in_thread(_batches(plan, conf_src, report, on_progress, t0))
                schema = arrow_schema(conf_src is not None)
                if dest is None:
                    return _to_geodataframe(list(batches), schema, src.crs)
                t = src.transform  # the shorter pixel side: every pixel corner along an edge is a multiple of it
                written = write_batches(dest[0], schema, batches, crs=src.crs, overwrite=overwrite, checked=True,
                                        style=lambda: vector_qml(src.style_classes(report.class_counts)),
                                        grid_step=min(float(np.hypot(t.a, t.d)), float(np.hypot(t.b, t.e))))
        finally:
            if conf_src is not None:
                conf_src.close()
    report.polygons = written
    report.empty = written == 0
    if report.empty:
        report.warnings.append("no polygons: no pixels of the selected classes; wrote an empty layer")
    report.seconds = time.perf_counter() - t0
    return report


def _cache_bytes(ds: Any, band_rows: int, sieve: int | None, bands: Sequence[int] = (1,)) -> int:
    """Bytes of the blocks that one band read of ``ds`` touches, plus one row of blocks: GDAL's block
    cache is capped at this (:func:`~geoseg.io.gdalcache.block_cache`), so it holds the blocks of about
    one band (retained blocks would also pin the heap, keeping every band's transient ``shapes`` memory).

    A band of ``band_rows`` rows (plus the sieve halo above and below) spans at most
    ``ceil(rows / block height) + 1`` rows of blocks; the extra row keeps the block row
    shared by two consecutive bands, so no block is decoded twice. Each block row is counted
    for the band's data (every band of a pixel-interleaved file, which GDAL decodes
    together) and for a mask of one byte a pixel (the nodata or internal mask read beside
    the data).
    """
    halo = int(sieve) if sieve and sieve > 1 else 0
    bh, bw = ds.block_shapes[bands[0] - 1] if ds.block_shapes else (1, ds.width)
    bh, bw = max(int(bh), 1), max(int(bw), 1)
    width = -(-ds.width // bw) * bw
    block_rows = min(-(-(band_rows + 2 * halo) // bh) + 1, -(-ds.height // bh))
    pixel_interleaved = str(getattr(ds, "interleaving", "") or "").lower().endswith("pixel")
    read = range(1, ds.count + 1) if pixel_interleaved else bands
    per_px = sum(np.dtype(ds.dtypes[b - 1]).itemsize for b in read) + len(bands)
    return int(max(block_rows * bh * width * per_px, MIN_CACHE_BYTES))


def _to_geodataframe(batches: list[Any], schema: Any, crs: Any) -> Any:
    import geopandas as gpd
    import pyarrow as pa
    import shapely

    table = pa.Table.from_batches(batches, schema=schema)
    df = table.drop(["geometry"]).to_pandas()
    geoms = shapely.from_wkb(np.asarray(table.column("geometry").to_pylist(), dtype=object)) \
        if table.num_rows else np.empty(0, dtype=object)
    return gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)
