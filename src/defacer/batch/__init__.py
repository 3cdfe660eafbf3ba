"""Deface whole datasets: discover scans, mirror the layout, run in parallel, resume.

Layers, lowest first (each module imports only the ones above it):

* :mod:`defacer.batch.discover`: find the scans in a BIDS dataset, a folder of image files or
  a folder of DICOM series, with ``--include``/``--exclude`` filters;
* :mod:`defacer.batch.layout`: where each output goes, ``dataset_description.json``, JSON
  sidecars marked defaced, non-image files copied or linked;
* :mod:`defacer.batch.manifest`: the append-only, crash-safe record of every scan's result;
* :mod:`defacer.batch.task`: the work on one scan, run inside a worker process;
* :mod:`defacer.batch.engines`: serial, process-pool and Dask execution of those tasks;
* :mod:`defacer.batch.summary`: terminal table and HTML summary;
* :mod:`defacer.batch.runner`: :func:`run_batch`, which composes all of the above.
"""

from __future__ import annotations

__all__ = ["BatchConfig", "BatchSummary", "run_batch"]


def __getattr__(name: str) -> object:
    # Lazy: importing defacer.batch must not import dask, rich or the pipeline.
    if name in __all__:
        from defacer.batch import runner

        return getattr(runner, name)
    raise AttributeError(name)
