"""Big-data preprocessing: archives and TIFFs in, dataset stores out (``pip install hpa-pipeline[prep]``).

- :mod:`.archive`: streaming 7z members, CRC checks, unsafe names, multi-volume archives.
- :mod:`.imaging`: one TIFF in; levels by area averaging; the 16 -> 8-bit rule.
- :mod:`.tasks`: the per-sample Dask task (decode, levels, shards, channel sums).
- :mod:`.memory`: freed sample buffers kept for the next sample (glibc's malloc).
- :mod:`.scheduler`: Dask clusters (local, recipes, a scheduler address), bounded submission.
- :mod:`.builder`: the coordinator of a build (done flags, report, statistics).
- :mod:`.extract`, :mod:`.build_zarr`, :mod:`.ingest`: the three ways into a store.
- :mod:`.inspect`, :mod:`.ngff`: looking at a store; OME-Zarr 0.5 export.
- :mod:`.synth`: synthetic data in the competition's on-disk format.
- :mod:`.exit_status`: the exit statuses these commands share.

Never imports torch or :mod:`hpa_pipeline.model`: a Dask worker needs only this half.
"""
