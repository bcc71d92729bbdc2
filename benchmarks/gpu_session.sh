#!/usr/bin/env bash
# The GPU checks of geoseg in one command, for the lent GPU machine (docs/gpu.md):
#   benchmarks/gpu_session.sh [smoke] [train] [tests] [stream-tests] [infer] [rss] [null]
#   (default: smoke infer null, about 9 minutes with the timeouts below: one device call of at most
#   10 minutes; then, if device time is left, a second call with "tests")
# That machine has torch but no rasterio, shapely, pyproj, geopandas or torchgeo, and
# ../shared does not travel. Prepare, here, from the project root (both folders git-ignored
# through .git/info/exclude):
#   ../shared/gpu/fetch-wheels.sh      # rasterio, shapely and theirs, into .whl/
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     pyproj==3.7.2 geopandas==1.2.0 torchgeo==0.8.1
#   benchmarks/gpu_data.sh            # copies of the shared files used, into .gpudata/
# and carry .whl and .gpudata with the command. Logs go to $OUT (or /tmp/geoseg-gpu-out).
set -u
out=${OUT:-/tmp/geoseg-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p ../shared && ln -sfn "$PWD/.gpudata" ../shared/data
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, rasterio, torchgeo; print('torch', torch.__version__, 'rasterio', rasterio.__version__,
'GDAL', rasterio.__gdal_version__, 'torchgeo', torchgeo.__version__, 'cpus', __import__('os').cpu_count())"
steps=${*:-smoke infer null}
for s in $steps; do
  case $s in
    smoke)
      echo "=== smoke: a small model and the null predictor on the GPU"
      timeout 60 python3 benchmarks/gpu_smoke.py cuda 2>&1 | tee "$out/smoke.log" ;;
    tests)
      echo "=== pytest -m gpu"
      timeout 200 python3 -m pytest -m gpu tests/test_gpu.py -q -s 2>&1 | tee "$out/pytest_gpu.log" ;;
    stream-tests)
      echo "=== pytest -m gpu: the device stages of inference only"
      timeout 120 python3 -m pytest -m gpu tests/test_gpu.py -q -s -k "device_stages or prefetch or compiled" 2>&1 \
        | tee "$out/pytest_gpu_stream.log" ;;
    train)
      echo "=== bench_train: the real scenes, small chips"
      timeout 150 python3 benchmarks/bench_train.py --device cuda --steps 200 --tile 64 --batch 16 --channels 16 \
        --workers 8 15 --ring both --threads 8 --brazil-polygons .gpudata/rstoolbox_brazil/trainingPolygons_lsat.parquet \
        2>&1 | tee "$out/bench_train_small.log"
      echo "=== bench_train: mirror-tiled 4096^2 scenes, 256^2 chips, classic 64-channel U-Net"
      timeout 120 python3 benchmarks/bench_train.py --device cuda --steps 120 --tile 256 --batch 16 --channels 64 \
        --workers 8 15 --ring both --threads 8 --cases brazil-mirror --mirror 4096 --workdir /tmp/bt \
        --brazil-polygons .gpudata/rstoolbox_brazil/trainingPolygons_lsat.parquet \
        2>&1 | tee "$out/bench_train_mirror.log"
      echo "=== bench_train: the real scenes, small chips, classic 64-channel U-Net"
      timeout 100 python3 benchmarks/bench_train.py --device cuda --steps 200 --tile 64 --batch 16 --channels 64 \
        --workers 8 --threads 8 --brazil-polygons .gpudata/rstoolbox_brazil/trainingPolygons_lsat.parquet \
        2>&1 | tee "$out/bench_train_small64.log" ;;
    infer)
      echo "=== bench_infer: classic 64-channel U-Net, 512^2 tiles, eager and compiled, DEFLATE input"
      timeout 330 python3 benchmarks/bench_infer.py --device cuda --base-channels 64 --tile-size 512 \
        --overlap 64 --batch-size 16 --sizes 4096 16384 --compile --fold-bn --read-modes --workdir /tmp/bi 2>&1 \
        | tee "$out/bench_infer.log" ;;
    rss)
      echo "=== bench_infer: peak RSS at 4096^2 and 16384^2, and with 1 reader thread and MALLOC_ARENA_MAX=2"
      timeout 200 python3 benchmarks/bench_infer.py --device cuda --base-channels 64 --tile-size 512 --overlap 64 \
        --batch-size 16 --sizes 4096 16384 --rss-only --rss-variants 2 --workdir /tmp/bi 2>&1 | tee "$out/bench_rss.log" ;;
    null)
      echo "=== bench_infer: the pipeline's own cost (null predictor on the GPU), uncompressed and DEFLATE input"
      timeout 150 python3 benchmarks/bench_infer.py --device cuda --null-only --no-rss --tile-size 512 --overlap 64 \
        --batch-size 16 --sizes ${NULL_SIZE:-8192} --compress none deflate --read-modes --floor --workdir /tmp/bn 2>&1 \
        | tee "$out/bench_null.log" ;;
    *) echo "unknown step $s (smoke, train, tests, stream-tests, infer, rss, null)"; exit 2 ;;
  esac
done
