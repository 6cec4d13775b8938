"""Export a run's certified calibrations for another butler repository (the Rubin stack's).

``cpflow export RUN_ID --to DIR`` copies every calibration the run certified into ``DIR/<dataset
type>/``, writes ``DIR/manifest.json`` (per file: dataset type, storage class, data id, validity
range, the collections it came from, size and SHA-256) and, per dataset type, an astropy ECSV
table that ``butler ingest-files`` reads, and ``DIR/ingest.sh`` with the commands a user with the
Rubin stack runs: ``butler ingest-files`` into a RUN collection of the target repository, then
``butler certify-calibrations`` into the calibration collection with the run's validity range.

The files are cpflow's (see the README for how they differ from afw's layouts); the commands are
those of daf_butler's own command line, which this environment has, so the tests run them
against a second repository.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import astropy.table
from lsst.daf.butler import Butler

from shared.butler.runrecords import (
    expected_calib_types,
    instrument_of_run,
    load_run_config,
    read_record,
)
from shared.records import CalibOutcome

__all__ = ["ExportError", "ExportedFile", "export_run", "ingest_commands", "target_run"]


class ExportError(LookupError):
    """A run that cannot be exported, and why."""


@dataclass(frozen=True)
class ExportedFile:
    """One exported calibration, as the manifest lists it."""

    dataset_type: str
    storage_class: str
    data_id: dict[str, Any]
    file: str
    """Path relative to the export directory."""
    size: int
    sha256: str
    source_run: str
    dataset_id: str
    calib_collection: str
    begin: str | None
    end: str | None


def target_run(instrument: str, run_id: str) -> str:
    """The RUN collection the exported files are ingested into in the target repository."""
    return f"{instrument}/calib/cpflow/{run_id}"


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def export_run(butler: Butler, run_id: str, directory: Path) -> list[ExportedFile]:
    """Copy the run's certified calibrations into ``directory`` with a manifest and ingest tables.

    Raises
    ------
    ExportError
        If the run is unknown or certified nothing.
    """
    instrument = _instrument(butler, run_id)
    config = load_run_config(butler, instrument, run_id)
    exported: list[ExportedFile] = []
    for calib_type in expected_calib_types(config):
        outcome = read_record(butler, CalibOutcome, instrument, run_id, calib_type)
        if outcome is None or not outcome.certified or outcome.calib_collection is None:
            continue
        for dataset_id in sorted(outcome.dataset_ids.values()):
            ref = butler.get_dataset(dataset_id)
            if ref is None:
                raise ExportError(
                    f"{calib_type} dataset {dataset_id} of run {run_id} is not in the repository"
                )
            source = Path(butler.getURI(ref).ospath)
            name = ref.datasetType.name
            destination = directory / name / source.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            exported.append(
                ExportedFile(
                    dataset_type=name,
                    storage_class=ref.datasetType.storageClass_name,
                    data_id=dict(ref.dataId.required),
                    file=str(destination.relative_to(directory)),
                    size=destination.stat().st_size,
                    sha256=_digest(destination),
                    source_run=ref.run,
                    dataset_id=str(ref.id),
                    calib_collection=outcome.calib_collection,
                    begin=outcome.begin,
                    end=outcome.end,
                )
            )
    if not exported:
        raise ExportError(f"run {run_id} certified no calibration; nothing to export")
    _write_tables(exported, directory)
    manifest = {"run_id": run_id, "instrument": instrument, "files": [asdict(item) for item in exported]}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    (directory / "ingest.sh").write_text(
        "#!/bin/sh\n# Ingest and certify cpflow's calibrations of run "
        f'{run_id} into the repository REPO (first argument).\nset -e\nREPO="$1"\n'
        + "\n".join(ingest_commands(exported, directory, instrument, run_id, repo='"$REPO"'))
        + "\n"
    )
    return exported


def _table_path(directory: Path, dataset_type: str) -> Path:
    return directory / f"{dataset_type}.ecsv"


def _write_tables(exported: list[ExportedFile], directory: Path) -> None:
    """One ``butler ingest-files`` table per dataset type: the file, then its data id but the instrument."""
    for dataset_type in sorted({item.dataset_type for item in exported}):
        rows = [item for item in exported if item.dataset_type == dataset_type]
        columns = [key for key in rows[0].data_id if key != "instrument"]
        table = astropy.table.Table(
            [[row.file for row in rows], *[[row.data_id[key] for row in rows] for key in columns]],
            names=["file", *columns],
        )
        table.write(_table_path(directory, dataset_type), format="ascii.ecsv", overwrite=True)


def ingest_commands(
    exported: list[ExportedFile], directory: Path, instrument: str, run_id: str, repo: str = "REPO"
) -> list[str]:
    """The ``butler`` commands that ingest and certify the exported files into the repository ``repo``."""
    run = target_run(instrument, run_id)
    commands = []
    certified: set[tuple[str, str, str | None, str | None]] = set()
    for item in exported:
        certified.add((item.dataset_type, item.calib_collection, item.begin, item.end))
    for dataset_type in sorted({item.dataset_type for item in exported}):
        commands.append(
            " ".join(
                [
                    "butler ingest-files --transfer copy",
                    f"--prefix {shlex.quote(str(directory))}",
                    f"--data-id instrument={shlex.quote(instrument)}",
                    repo,
                    dataset_type,
                    shlex.quote(run),
                    shlex.quote(str(_table_path(directory, dataset_type))),
                ]
            )
        )
    for dataset_type, calib_collection, begin, end in sorted(certified, key=str):
        dates = (f" --begin-date {begin}" if begin else "") + (f" --end-date {end}" if end else "")
        commands.append(
            f"butler certify-calibrations{dates} {repo} {shlex.quote(run)} "
            f"{shlex.quote(calib_collection)} {dataset_type}"
        )
    return commands


def _instrument(butler: Butler, run_id: str) -> str:
    instrument = instrument_of_run(butler, run_id)
    if instrument is None:
        raise ExportError(f"no run {run_id} in the butler repository")
    return instrument
