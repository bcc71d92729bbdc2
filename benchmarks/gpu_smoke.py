"""A first check of inference on a device: a small model and the null predictor on sample_data/field.tif.

    python benchmarks/gpu_smoke.py cuda      (run from the project root; benchmarks/gpu_session.sh smoke)
"""
import sys
import time
import traceback
sys.path.insert(0, ".")
from geoseg.models.init import init_checkpoint
from geoseg.pipeline import predict_raster
from geoseg.predict.null import NullPredictor
from geoseg.predict import TorchPredictor
dev = sys.argv[1]
src = "sample_data/field.tif"
import rasterio
with rasterio.open(src) as ds: nb = ds.count
init_checkpoint("/tmp/smoke.pt", bands=nb, classes=3, base_channels=8, depth=2, stats_from=src, overwrite=True)
for name, m in [("model", "/tmp/smoke.pt"), ("null", None)]:
    try:
        t = time.perf_counter()
        model = m or NullPredictor(TorchPredictor.from_checkpoint("/tmp/smoke.pt", device=dev).meta, device=dev)
        rep = predict_raster(src, model, f"/tmp/smoke_{name}.tif", probabilities=f"/tmp/smoke_{name}_p.tif",
                             device=dev, overwrite=True)
        print("smoke", name, rep.device, rep.tiles_run, rep.class_pixel_counts, f"{time.perf_counter()-t:.2f} s")
    except Exception:
        traceback.print_exc()
