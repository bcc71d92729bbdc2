"""Many inputs, or one huge raster in blocks, on a Dask cluster (docs/distributed.md). Torch-free.

* :mod:`geoseg.distributed.cluster`: a client to an existing scheduler or a local cluster; the
  up-front check that every worker sees the inputs and output folders;
* :mod:`geoseg.distributed.jobs`: the client's side: tasks per input or per block of rows,
  failures by input, blocks joined into the single-process COGs;
* :mod:`geoseg.distributed.tasks`: the workers' side: the per-worker model cache, the tasks.

Only these modules import Dask, and only when a command asks for a cluster.
"""
