"""What runs on a Dask worker: whole inputs, blocks of rows, the storage check. Torch-free at import.

Each worker process keeps the models it loaded (:func:`cached_model`, through
:func:`geoseg.predict.load.shared_predictor`), keyed by the checkpoints' content hashes and the
device options, so a model is loaded once per worker, not once per task. Every task writes
through the atomic outputs of the single-process code (staging files, renamed when complete), so
a worker killed mid-task leaves no partial file under a final name and the task can simply run
again elsewhere.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

def _device(device: str) -> str:
    """``auto`` on a worker of a local cluster on a machine with several GPUs: the worker's own GPU
    (worker ``i`` takes GPU ``i`` modulo their number): one worker per GPU."""
    if device != "auto":
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    import torch

    n = torch.cuda.device_count()
    if n > 1 and isinstance(name, int):
        return f"cuda:{name % n}"
    return device


def _threads() -> int | None:
    """Threads of a model on a CPU: as many as the worker has (``dask worker --nthreads``; one in
    ``--workers N`` clusters), so N workers on N cores do not fight over them."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def cached_model(paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> tuple[Any, threading.Lock]:
    """This worker's predictor for ``paths`` and options, loaded on first use
    (:func:`geoseg.predict.load.shared_predictor`) on the worker's own GPU and threads; with its lock (one
    run at a time uses a model)."""
    from geoseg.predict.load import shared_predictor
    from geoseg.predict.onnx import is_onnx

    if not any(is_onnx(p) for p in paths):  # ONNX models run on the CPU as exported
        kwargs["device"] = _device(kwargs.get("device", "auto"))
        if kwargs.get("threads") is None:
            kwargs["threads"] = _threads()
    return shared_predictor(paths, **kwargs)


def _loader(lock_holder: list[threading.Lock]) -> Any:
    def load(paths: Sequence[str], **kwargs: Any) -> Any:
        model, lock = cached_model(paths, **kwargs)
        lock.acquire()
        lock_holder.append(lock)
        return model

    return load


def _done_earlier(paths: Sequence[Path], since_ns: int) -> bool:
    """Outputs published by an earlier attempt of this task (its worker died before reporting)."""
    try:
        return all(p.stat().st_mtime_ns >= since_ns for p in paths)
    except OSError:
        return False


def stop_checker(flag: str | None) -> Any:
    """An ``on_progress`` callback that raises :class:`~geoseg.errors.Interrupted` once the file ``flag``
    exists: the client was interrupted, and a task already running would otherwise run to its end and
    publish its outputs after the command had exited. The flag lies beside the outputs, on storage every
    worker sees (:func:`geoseg.distributed.cluster.check_storage`); a stat a batch costs nothing."""
    if flag is None:
        return None
    from geoseg.errors import Interrupted

    def check(*_: Any) -> None:
        if os.path.exists(flag):
            raise Interrupted("stopped: the client that started this task was interrupted")

    return check


def infer_task(source: str, model: Sequence[str], classes: str, probabilities: str | None, options: dict[str, Any],
               overwrite: bool, resume: bool, since_ns: int, rows: tuple[int, int] | None = None,
               stop: str | None = None) -> dict[str, Any]:
    """Run ``predict_raster`` on a whole input (or on its block ``rows``, as parts); a small summary. It stops
    (keeping what ``resume`` continues from) once the file ``stop`` exists (:func:`stop_checker`)."""
    from geoseg.pipeline import predict_raster
    from geoseg.predict import load

    outs = [Path(classes)] + ([Path(probabilities)] if probabilities else [])
    if rows is None and _done_earlier(outs, since_ns):  # a block simply runs again (its parts are the job's own)
        return {"again": True}
    held: list[threading.Lock] = []
    try:
        rep = predict_raster(source, list(model), classes, probabilities=probabilities, overwrite=overwrite,
                             resume=resume, rows=rows, load_model=_loader(held), on_progress=stop_checker(stop),
                             **options)
    finally:
        for lk in held:
            lk.release()
    return {"width": rep.width, "height": rep.height, "tiles": rep.tiles_run, "seconds": rep.seconds,
            "device": rep.device, "specs": rep.sink_specs, "loads": load.LOADS, "worker_pid": os.getpid()}


def vectorize_task(source: str, output: str, options: dict[str, Any], probabilities: str | None, overwrite: bool,
                   since_ns: int) -> dict[str, Any]:
    """Vectorize a whole input in this worker; a small summary."""
    from geoseg.vector import vectorize

    if _done_earlier([Path(output)], since_ns):
        return {"again": True}
    rep = vectorize(source, output, probabilities=probabilities, overwrite=overwrite, workers=1, **options)
    return {"polygons": rep.polygons, "seconds": rep.seconds, "warnings": list(rep.warnings)}


def storage_problems(readable: Sequence[str], writable: Sequence[tuple[str, str]]) -> list[str]:
    """What this worker cannot see: inputs it cannot read; output folders where it cannot find the probe
    file the client wrote there (another storage under the same name) or cannot write. Run on every
    worker by :func:`geoseg.distributed.cluster.check_storage`."""
    import uuid

    problems = []
    from geoseg.io.paths import gdal_path, is_virtual

    for p in readable:
        if is_virtual(p):
            import rasterio
            from rasterio.errors import RasterioIOError

            try:
                with rasterio.open(gdal_path(p)):
                    pass
            except RasterioIOError:
                problems.append(f"cannot read {p}")
        elif not os.access(p, os.R_OK):
            problems.append(f"cannot see {p}")
    for d, probe in writable:
        if not (Path(d) / probe).exists():
            problems.append(f"cannot see the output folder {d} (a file the client wrote there is not visible)")
            continue
        mine = Path(d) / f".geoseg-tmp-probe-{uuid.uuid4().hex}"
        try:
            mine.write_bytes(b"")
            mine.unlink()
        except OSError as e:
            problems.append(f"cannot write to the output folder {d} ({e.strerror})")
    return problems
