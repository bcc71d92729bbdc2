#!/usr/bin/env bash
# Copy the shared files that benchmarks/gpu_session.sh uses into .gpudata/ (git-ignored via
# .git/info/exclude), with Brazil's polygons as GeoParquet (no pyogrio on the GPU machine).
set -euo pipefail
src=${1:-../shared/data}
mkdir -p .gpudata/ftw_baselines .gpudata/rstoolbox_brazil .gpudata/eolearn_slovenia
cp "$src/ftw_baselines/inference-img.tif" .gpudata/ftw_baselines/
cp "$src/rstoolbox_brazil/lsat_tm_1988.tif" .gpudata/rstoolbox_brazil/
cp "$src/eolearn_slovenia/NDVI_timeseries_68dates.tif" "$src/eolearn_slovenia/LULC_label.tif" .gpudata/eolearn_slovenia/
python -c "import geopandas as g, sys; g.read_file(sys.argv[1]).to_parquet(sys.argv[2])" \
  "$src/rstoolbox_brazil/trainingPolygons_lsat.gpkg" .gpudata/rstoolbox_brazil/trainingPolygons_lsat.parquet
du -sh .gpudata
