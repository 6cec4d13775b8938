"""``cpflow demo``: a whole calibration run on the simulated camera, start to finish.

Starts the local stack, submits the run, follows it, prints a summary (run id, frames,
verification per test, the certified dataset and its validity range, where the files are) and
stops what it started.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import yaml
from astropy.time import Time, TimeDelta
from lsst.daf.butler import Timespan

from cpflow.runview import build_views
from cpflow.stack import stack_down, stack_up
from cpflow.submission import EXIT_REJECTED, print_status_line, report_final, submit_run, wait_for_run
from cpflow.topics_reader import read_events
from shared.butler.collections import calib_chain
from shared.butler.repo import open_butler
from shared.kafka_access import connection_for
from shared.runconfig import ConfigurationError
from shared.settings import Settings
from shared.topics import Topics

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = Path(__file__).parent / "demo_run.yaml"
"""The bundled demo: a whole LATISS BIAS_DARK_FLAT run with defects and PTC."""


def _demo_config(settings: Settings, source: Path) -> Path:
    """The demo configuration with a calib collection of its own, so demos can be repeated."""
    document = yaml.safe_load(source.read_text())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    if str(document.get("calib_collection", "")).endswith("/demo"):
        document["calib_collection"] = f"{document['calib_collection']}/{stamp}"
    target = settings.home / "demo" / f"run-{stamp}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def _butler_summary(settings: Settings, instrument: str, types: dict[str, dict]) -> list[str]:
    """Where each certified calibration is, found the way science processing finds it."""
    lines = []
    butler = open_butler(settings.butler_repo, writeable=False)
    for calib_type, t in types.items():
        cert = t.get("certification") or {}
        if not cert.get("certified"):
            continue
        begin = Time(cert["begin"], scale="tai")
        for detector, dataset_id in sorted(cert.get("dataset_ids", {}).items()):
            ref = butler.get_dataset(uuid.UUID(dataset_id))
            found = butler.find_dataset(
                calib_type,
                ref.dataId if ref is not None else None,
                collections=calib_chain(instrument),
                timespan=Timespan(begin, begin + TimeDelta(1, format="sec")),
            )
            where = butler.getURI(ref).ospath if ref is not None else "?"
            lines.append(
                f"  {calib_type} detector {detector}: dataset {dataset_id}\n"
                f"    found in {calib_chain(instrument)} at {cert['begin']}: {found is not None}\n"
                f"    file: {where}"
            )
    return lines


def run_demo(settings: Settings, config: Path, timeout: float = 1800.0) -> int:
    """Start the stack, run ``config`` to its end, print what became of it, stop the stack."""
    print("== starting the local stack")
    stack_up(settings)
    try:
        effective = _demo_config(settings, config)
        print(f"== submitting {effective}")
        try:
            run_id, run_config = submit_run(settings, effective)
        except ConfigurationError as exc:
            print("configuration rejected:\n" + "\n".join(f"  - {e}" for e in exc.errors))
            return EXIT_REJECTED
        print(run_id, flush=True)
        code = report_final(run_id, wait_for_run(settings, run_id, timeout, print_status_line), timeout)
        events = asyncio.run(
            read_events(connection_for(settings), Topics(settings.topic_prefix).run_topics(), run_id=run_id)
        )
        view = build_views(events).get(run_id)
        print("\n== summary")
        if view is not None:
            print(view.render())
            for calib_type, t in view.types.items():
                ver = t.get("verification") or {}
                if ver.get("summary"):
                    print(f"\n-- {calib_type} verification report\n{ver['summary']}")
            print("\n== in the butler")
            print(f"  repository: {settings.butler_repo}")
            for line in _butler_summary(settings, run_config.instrument, view.types):
                print(line)
            print(f"  service logs: {settings.log_dir}")
        return code
    finally:
        print("\n== stopping the local stack")
        stack_down(settings)
