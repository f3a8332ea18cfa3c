"""``build-zarr``: a folder of ``<id>_<filter>.tif`` files (what ``extract`` writes) into the store.

One Dask task per sample reads its four TIFFs, makes every level and writes them; the
coordinator (:class:`.builder.StoreBuilder`) marks samples done, so a re-run resumes.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .builder import BuildReport, StoreBuilder, start_build
from .extract import REPORT_NAME as EXTRACT_REPORT
from ..contract.labels import MEMBER_NAME, check_source_matches, read_sample_table
from ..common.machine import usable_cores
from ..common.progress import Counter, ProgressCallback
from .scheduler import WORKER_TIMEOUT, announcing, check_cluster_choice, dask_client, in_flight_limit, run_bounded
from ..contract.store import StoreSpec
from ..contract.locks import writes_store
from .tasks import process_sample
from ..contract.errors import HpaError

log = logging.getLogger(__name__)


def index_tiff_folder(src: str | Path) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """``{id: {filter: path}}`` of the HPA channel images (TIFF, PNG, JPEG) under ``src`` (any
    depth), and the other files."""
    by_id: dict[str, dict[str, Path]] = {}
    unknown: list[str] = []
    src = Path(src)
    if not src.is_dir():
        raise HpaError(f"{src}: no such folder")
    for path in sorted(p for p in src.rglob("*") if p.is_file() and p.name != EXTRACT_REPORT):
        match = MEMBER_NAME.match(path.name)
        if match and not path.name.endswith(".partial"):
            channels = by_id.setdefault(match["id"], {})
            if match["filter"] in channels:  # e.g. x_red.png beside x_red.tif: the first is used
                unknown.append(f"{path.relative_to(src)} (another {match['filter']} file of {match['id']}: "
                               f"{channels[match['filter']].name} is used)")
            else:
                channels[match["filter"]] = path
        else:
            unknown.append(str(path.relative_to(src)))
    return by_id, unknown


@writes_store
def build_zarr(src: str | Path, csv: str | Path, out: str | Path, spec: StoreSpec, workers: int | None = None,
               scheduler: str | None = None, cluster: str = "threads", progress: ProgressCallback | None = None,
               threads_per_worker: int = 1, worker_timeout: float = WORKER_TIMEOUT,
               upscale: bool = False) -> BuildReport:
    """Build (or resume) the store at ``out`` from the TIFFs in ``src``, samples in ``csv`` order.

    ``progress`` gets the samples finished (task ``build-zarr``) and, as a message, the Dask
    cluster's dashboard link and worker counts once it is up. ``workers`` (local clusters):
    samples processed at once; default all cores.
    """
    workers = workers or usable_cores()
    table = read_sample_table(csv)
    check_cluster_choice(scheduler, cluster)  # before the store is created
    files, unknown = index_tiff_folder(src)
    log.debug("%s: images of %d samples, %d other files; %d samples in %s", src, len(files), len(unknown),
              len(table), csv)
    check_has_images(files, unknown, src)
    check_source_matches(table, files, csv, src)
    builder = start_build(out, table, spec, "build-zarr", source=str(src), upscale=upscale)
    jobs = _jobs(builder, files, src)
    finished = Counter(progress, "build-zarr", len(jobs))
    finished.start()

    def on_result(result):
        builder.on_result(result)
        finished.add()

    with builder.saving_on_interrupt(), dask_client(scheduler, workers, cluster, announcing(progress, "build-zarr"),
                                                    threads_per_worker, worker_timeout) as client:
        run_bounded(client, process_sample, builder.until_given_up(jobs), in_flight_limit(client), on_result,
                    builder.on_error)
    builder.stop_if_all_failed_alike()
    return builder.finish(not_in_csv=sorted(set(files) - set(table.ids)), unknown_files=unknown)


def check_has_images(files: dict, unknown: list[str], src: str | Path) -> None:
    """Refuse a folder without a single ``<id>_<filter>`` image before a store is made for it:
    every sample would fail one by one and leave a store of failures to delete."""
    if files:
        return
    found = f"{len(unknown)} other files, e.g. {unknown[0]}" if unknown else "it is empty"
    raise HpaError(f"--src {src}: no <id>_<filter> image (.tif, .png, .jpg) in it or below it ({found}); "
                      f"is this the folder extract wrote?")


def _jobs(builder: StoreBuilder, files: dict[str, dict[str, Path]], src: str | Path) -> list:
    """A task for each pending sample with its four files; a sample without files fails here."""
    jobs = []
    for index in builder.pending():
        sample_id = builder.table.ids[index]
        found = files.get(sample_id)
        if not found:
            builder.fail(index, f"{sample_id}: no image (TIFF, PNG or JPEG) for this id in {src}")
            continue
        jobs.append(builder.job(index, {f: str(p) for f, p in found.items()}))
    return jobs
