"""A Dask client: to an existing scheduler, or to a local cluster started for one command.

Local clusters run one worker *process* per ``workers``, one thread each (the model's
own threads are the parallelism inside a worker; Dask's nanny sets ``OMP_NUM_THREADS=1``),
so N workers use N cores, or N GPUs (:func:`geoseg.distributed.tasks.cached_model`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from geoseg.errors import GeosegError, RasterWriteError, UsageError

#: how long connecting to a scheduler may take before the command gives up, seconds
CONNECT_TIMEOUT_S = 30


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError("`scheduler`/`workers` need Dask: pip install 'dask[distributed]'") from None
    return distributed


@contextlib.contextmanager
def client_for(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A ``distributed.Client`` to ``scheduler``, or to a local cluster of ``workers`` processes
    (closed again at the end)."""
    distributed = _import_distributed()
    if scheduler is not None and workers is not None:
        raise UsageError("`scheduler` and `workers` exclude each other: the scheduler's cluster has its own workers")
    if scheduler is not None:
        check_address(scheduler)
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise UsageError(f"{scheduler}: cannot reach the Dask scheduler ({str(e).splitlines()[0][:120]}); "
                             "check the address and that 'dask scheduler' runs there") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = int(workers or 1)
    # the workers' own Python finds this geoseg, whatever the current directory
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    import dask

    # Dask's statistical profiler samples every worker thread's stack every 10 ms, which slowed the
    # one-thread workers' Python-heavy tasks: 1 worker took 1.19x the in-process time before; with it off,
    # 6 rasters of 512² took 10.3-12.8 s against 13.2-15.7 s (in-process 9.0-11.2 s; 2 shared cores at a
    # load of 3.5). The nannies hand these settings to the worker processes they start.
    with dask.config.set({"distributed.worker.profile.enabled": False, **WORKER_ENVIRON}):
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address="127.0.0.1:0", host="127.0.0.1", silence_logs=50)
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


#: The workers' C heap. Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``: setting any
#: of glibc's malloc thresholds turns off its adaptive mmap threshold, so every buffer over 128 KiB (row
#: bands, batches, tiles) was a fresh mmap with its page faults (a 1536² raster: 6.6-6.9 s in-process
#: with it, 5.8-6.1 s without; 2 cores, demo model). None unsets it (the pipeline manages its heap,
#: :mod:`geoseg.io.heap`). And a task runs in a worker thread, whose allocations glibc serves from a
#: thread arena of 64 MiB heaps that are unmapped whenever they empty: 5x the page faults of the same
#: run on a main thread, 4.1-4.2 s against 3.6-3.7 s. ``MALLOC_ARENA_MAX=1`` keeps every thread in
#: the main heap (3.6-3.7 s). docs/distributed.md says how to do the same on external workers.
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                  "distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1}


def dashboard(client: Any) -> str | None:
    """The dashboard's address (None without bokeh, which serves it)."""
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard is not an error
        return None


#: Dask's schemes for a scheduler address (``tcp://host:8786``; a bare ``host:port`` is tcp)
ADDRESS_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def check_address(address: str) -> None:
    """Refuse what is not a scheduler address in one line (the dashboard's ``http://`` URL, a typo): Dask
    raised an unexpected ValueError, then waited 60 s for a client it never had."""
    import re

    m = re.fullmatch(r"(?:([a-z]+)://)?(\[[0-9a-fA-F:]+\]|[^/:\s]+)(?::(\d+))?/?", address.strip())
    scheme = m.group(1) if m else None
    if m is None or (scheme is not None and scheme not in ADDRESS_SCHEMES) or (scheme is None and not m.group(3)):
        raise UsageError(f"`scheduler` {address!r}: not a Dask scheduler address; give the scheduler's own, e.g. "
                         "tcp://10.0.0.5:8786 (the one 'dask scheduler' prints, not its dashboard's http:// URL)")


def check_storage(client: Any, readable: Sequence[str], writable: Sequence[str]) -> None:
    """Fail with one line naming the first worker and path it cannot see.

    Every input, checkpoint and output folder must be on storage all workers see (a shared
    file system, or GDAL paths such as ``/vsis3/`` where they have credentials). The client
    writes a probe file into each output folder; a worker that does not find it there sees
    another storage under the same path.
    """
    import uuid

    from geoseg.distributed.tasks import storage_problems

    info = client.scheduler_info(n_workers=-1) if _accepts_n(client) else client.scheduler_info()
    if not info["workers"]:
        raise UsageError("the Dask cluster has no workers; start some with 'dask worker <scheduler address>'")
    probe = f".geoseg-tmp-probe-{uuid.uuid4().hex}"
    made = []
    try:
        for d in writable:
            if not Path(d).is_dir():  # as check_destination says it, before the probe (FileNotFoundError)
                raise RasterWriteError(f"{d}: output directory does not exist; create it first")
            try:
                (Path(d) / probe).write_bytes(b"")
            except OSError as e:
                raise RasterWriteError(f"{d}: output directory is not writable ({e.strerror}); choose another "
                                       "with -o") from None
            made.append(Path(d) / probe)
        found = client.run(storage_problems, list(readable), [(d, probe) for d in writable])
    finally:
        for p in made:
            with contextlib.suppress(OSError):
                p.unlink()
    for addr in sorted(found):
        if found[addr]:
            raise StorageError(f"worker {addr} {found[addr][0]}; inputs, models and outputs must be on storage "
                               "every worker sees (a shared file system, or /vsis3/-style paths)")


def _accepts_n(client: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


class StorageError(GeosegError):
    """A worker cannot see an input or output path."""
