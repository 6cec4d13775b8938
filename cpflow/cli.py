"""``cpflow``: the operator's command line.

    cpflow stack up | down | status
    cpflow submit CONFIG.yaml [--wait] [--timeout SECONDS]
    cpflow status [RUN_ID] [--json]
    cpflow events RUN_ID [--json]
    cpflow report RUN_ID [-o DIR]
    cpflow demo [CONFIG.yaml]
    cpflow ingest-raws PATH... [--instrument NAME] [--transfer MODE]

Exit codes of ``submit``: 0 submitted (with ``--wait``: the run SUCCEEDED), 1 the run FAILED,
2 the configuration was rejected, 3 no final state before the timeout; any command: 4 a ``CPFLOW_*``
environment variable has a bad value. ``ingest-raws``: 0 every file is in the raw collection (newly
or already), 1 at least one file could not be ingested (each is named with the reason), 2 no file
was given or found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, get_args

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from cpflow.runview import RunView, build_views
from cpflow.submission import (
    EXIT_BROKER,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_REPOSITORY,
    EXIT_USAGE,
    cancel_run,
    print_status_line,
    report_final,
    submit_run,
    wait_for_run,
)
from cpflow.topics_reader import read_events
from shared.kafka_access import connection_for
from shared.records import ReplayStage
from shared.runconfig import ConfigurationError
from shared.settings import Settings, SettingsError, load_settings
from shared.topics import Topics

__all__ = ["main"]


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        run_id, _config = submit_run(settings, args.config)
    except ConfigurationError as exc:
        print(f"configuration rejected ({args.config}):", file=sys.stderr)
        for error in exc.errors:
            print(f"  - {error}", file=sys.stderr)
        return EXIT_REJECTED
    print(run_id, flush=True)
    if not args.wait:
        return EXIT_OK
    final = wait_for_run(settings, run_id, args.timeout, on_status=None if args.quiet else print_status_line)
    return report_final(run_id, final, args.timeout)


def _events(settings: Settings, run_id: str | None) -> list[dict[str, Any]]:
    """The run topics' valid events (of ``run_id``); messages that are not valid events are counted."""
    unreadable: list[Any] = []
    topics = Topics(settings.topic_prefix)
    events = asyncio.run(
        read_events(
            connection_for(settings), topics.run_topics(), run_id=run_id, on_unreadable=unreadable.append
        )
    )
    if unreadable:
        print(
            f"note: {len(unreadable)} message(s) on the topics are not valid events and were skipped "
            f"(see {topics.deadletter})",
            file=sys.stderr,
        )
    return events


def _views(settings: Settings, run_id: str | None) -> dict[str, RunView]:
    return build_views(_events(settings, run_id))


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    views = _views(settings, args.run_id)
    if args.run_id:
        view = views.get(args.run_id)
        if view is None:
            print(f"no events for run {args.run_id}", file=sys.stderr)
            return 1
        print(json.dumps(view.to_dict(), indent=2, default=str) if args.json else view.render())
        return 0
    if args.json:
        print(json.dumps([v.to_dict() for v in views.values()], indent=2, default=str))
    elif not views:
        print("no runs")
    else:
        for view in views.values():
            print(view.one_line())
    return 0


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    events = _events(settings, args.run_id)
    if not events:
        print(f"no events for run {args.run_id}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(events, indent=2, default=str))
        return 0
    for event in events:
        kind = event.get("type", event["_topic"])
        text = event.get("message") or event.get("reason") or ""
        if kind == "frames.acquired":
            text = f"{event['image_type']}: {len(event.get('exposures', []))} kept, {event.get('outcome')}"
        elif kind == "calib.generated":
            text = f"{event['calib_type']}: generated={event['generated']} {event.get('outcome')}"
        elif kind == "calib.verified":
            text = f"{event['calib_type']}: {event['verdict']} {event.get('outcome')}"
        elif kind == "calib.certified":
            text = f"{event['calib_type']}: certified={event['certified']} {event.get('reason') or ''}"
        elif kind == "run.status":
            text = f"{event['state']} {event.get('stage')}: {event.get('message')}"
        print(f"{event.get('time', '')[:23]}  {event.get('producer', ''):10s} {kind:16s} {text}")
    view = build_views(events).get(args.run_id)
    if view is not None:
        print(f"run {args.run_id}: {view.state}")
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    cancel_run(settings, args.run_id, args.reason)
    print(f"cancellation of {args.run_id} requested", flush=True)
    return EXIT_OK


def cmd_deadletters(args: argparse.Namespace, settings: Settings) -> int:
    from cpflow.deadletters import RedriveError, read_letters, redrive, select

    letters = select(
        asyncio.run(read_letters(connection_for(settings), settings, run_id=args.run)), ids=args.id
    )
    if args.action == "list":
        summaries = [letter.summary() for letter in letters]
        if args.json:
            print(json.dumps(summaries, indent=2))
        elif not summaries:
            print("no dead letters")
        for summary in [] if args.json else summaries:
            print(
                f"{summary['id']}  {summary['time']}  run {summary['run_id']}  {summary['service']}  "
                f"{summary['origin']}  {summary['size']} B ({summary['kept']})\n    {summary['error'][:300]}"
            )
        return EXIT_OK
    if not args.id and not args.run:
        print(
            "cpflow deadletters redrive: choose letters with --id ID (repeatable) or --run RUN_ID",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not letters:
        print("no dead letter matches", file=sys.stderr)
        return EXIT_FAILED
    try:
        # Redriving writes the services' own topics, which only a privileged user may do.
        redriven = asyncio.run(redrive(connection_for(settings, "admin"), settings, letters))
    except RedriveError as exc:
        print(f"cpflow deadletters redrive: {exc}; nothing was redriven", file=sys.stderr)
        return EXIT_FAILED
    for letter_id in redriven:
        print(f"redriven {letter_id}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from cpflow.report import find_run, write_report
    from shared.butler.repo import open_butler

    butler = open_butler(settings.butler_repo, writeable=False)
    try:
        if find_run(butler, args.run_id) is None:
            print(
                f"cpflow report: no run {args.run_id} in the butler at {settings.butler_repo}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        notes: list[str] = []
        try:
            events = _events(settings, args.run_id)
        except (KafkaError, OSError, RuntimeError) as exc:
            # The butler is the authority: the page is written without the timeline.
            events = []
            notes.append(f"the run's events could not be read from the broker ({type(exc).__name__}: {exc})")
            print(f"note: {notes[-1]}; the page has no timeline", file=sys.stderr)
        path = write_report(butler, args.run_id, Path(args.output), events=events, notes=notes)
    finally:
        butler.close()
    print(path)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from cpflow.export import ExportError, export_run, ingest_commands
    from shared.butler.repo import open_butler

    directory = Path(args.to or f"cpflow-export-{args.run_id}").absolute()
    try:
        with open_butler(settings.butler_repo, writeable=False) as butler:
            exported = export_run(butler, args.run_id, directory)
    except ExportError as exc:
        print(f"cpflow export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    instrument = exported[0].data_id["instrument"]
    print(f"exported {len(exported)} calibration file(s) of run {args.run_id} to {directory}")
    print(f"manifest: {directory / 'manifest.json'}; the same commands: sh {directory / 'ingest.sh'} REPO")
    print("to ingest and certify them in a Rubin repository REPO:")
    for command in ingest_commands(exported, directory, str(instrument), args.run_id):
        print(f"  {command}")
    return EXIT_OK


def cmd_sandbox(args: argparse.Namespace, settings: Settings) -> int:
    from cpflow.sandbox import sandbox_down, sandbox_up

    try:
        if args.action == "up":
            sandbox = sandbox_up(settings, args.prefix)
            print(f"sandbox {args.prefix} is up: topics {args.prefix}.*, state in {sandbox.home}")
        else:
            sandbox_down(settings, args.prefix)
            print(f"sandbox {args.prefix} is down")
    except ValueError as exc:
        print(f"cpflow sandbox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from cpflow.replay import ReplayError, replay_run
    from cpflow.sandbox import sandbox_settings

    try:
        new_id, sent = replay_run(settings, args.run_id, args.stage, args.prefix, certify=not args.no_certify)
    except ValueError as exc:
        print(f"cpflow replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ReplayError as exc:
        print(f"cpflow replay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(new_id, flush=True)
    print(
        f"replaying {args.run_id} from {args.stage}: {sent} event(s) sent to {args.prefix}", file=sys.stderr
    )
    if not args.wait:
        return EXIT_OK
    sandbox = sandbox_settings(settings, args.prefix)
    final = wait_for_run(sandbox, new_id, args.timeout, on_status=print_status_line)
    return report_final(new_id, final, args.timeout)


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from cpflow.stack import stack_credentials, stack_down, stack_status, stack_up

    if args.action == "up":
        stack_up(settings)
        print("stack is up")
        return 0
    if args.action == "down":
        stack_down(settings)
        print("stack is down")
        return 0
    if args.action == "credentials":
        if not args.name:
            print(
                "cpflow stack credentials NAME: give a role (a service, operator or admin)", file=sys.stderr
            )
            return EXIT_REJECTED
        try:
            credentials = stack_credentials(settings, args.name)
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(credentials, indent=2))
        else:
            for key, value in credentials.items():
                print(f"{key}: {value}")
        return 0
    statuses = stack_status(settings)
    for s in statuses:
        state = "ready" if s.ready else ("running" if s.running else "stopped")
        print(f"{s.name:10s} {state:8s} pid={s.pid or '-':<8} {s.detail}")
    return 0 if all(s.ready for s in statuses) else 1


def cmd_ingest_raws(args: argparse.Namespace, settings: Settings) -> int:
    from shared.butler.exposures import ingest_files, raw_files
    from shared.butler.repo import create_repository, open_butler
    from shared.instruments import get_instrument

    instrument = None
    if args.instrument:
        try:
            instrument = get_instrument(args.instrument)
        except KeyError as exc:
            print(f"cpflow ingest-raws: {exc.args[0]}", file=sys.stderr)
            return EXIT_REJECTED
    missing = [p for p in args.paths if not Path(p).exists()]
    files = raw_files([p for p in args.paths if Path(p).exists()])
    if not files and not missing:
        print(
            f"cpflow ingest-raws: no raw files (*.fits, *.fz) under {' '.join(args.paths)}", file=sys.stderr
        )
        return EXIT_REJECTED
    root = create_repository(
        settings.butler_repo, registry_db=settings.registry_db, seed=settings.butler_seed
    )
    with open_butler(root) as butler:
        outcomes = ingest_files(butler, files, instrument, transfer=args.transfer)
    counts = {"ingested": 0, "unchanged": 0, "failed": len(missing)}
    for path in missing:
        print(f"failed     {path}: no such file or directory")
    for outcome in outcomes:
        counts[outcome.outcome] += 1
        text = outcome.detail if outcome.outcome == "failed" else f"{outcome.path}: {outcome.detail}"
        print(f"{outcome.outcome:10s} {text}")
    print(
        f"{counts['ingested']} ingested, {counts['unchanged']} already there (unchanged), "
        f"{counts['failed']} failed"
    )
    return EXIT_OK if counts["failed"] == 0 else EXIT_FAILED


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from cpflow.demo import DEMO_CONFIG, run_demo

    return run_demo(settings, Path(args.config) if args.config else DEMO_CONFIG, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpflow", description="Calibration products on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="start, stop or inspect the local broker and services")
    stack.add_argument("action", choices=["up", "down", "status", "credentials"])
    stack.add_argument("name", nargs="?", help="credentials: the role (a service, operator or admin)")
    stack.add_argument("--json", action="store_true", help="credentials: as JSON")
    stack.set_defaults(func=cmd_stack)

    submit = sub.add_parser("submit", help="validate and submit a run configuration")
    submit.add_argument("config", help="run configuration (YAML)")
    submit.add_argument("--wait", action="store_true", help="wait for the run's final state")
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 3600)")
    submit.add_argument("--quiet", action="store_true", help="with --wait, print only the final state")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="state of one run per stage, or of all runs")
    status.add_argument("run_id", nargs="?")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    events = sub.add_parser("events", help="the event timeline of a run")
    events.add_argument("run_id")
    events.add_argument("--json", action="store_true")
    events.set_defaults(func=cmd_events)

    cancel = sub.add_parser("cancel", help="stop taking a run's frames; the run ends FAILED")
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default="cancelled by an operator")
    cancel.set_defaults(func=cmd_cancel)

    sandbox = sub.add_parser("sandbox", help="start or stop a sandbox: four services on another topic prefix")
    sandbox.add_argument("action", choices=["up", "down"])
    sandbox.add_argument("prefix", help="the sandbox's topic prefix, e.g. debug1")
    sandbox.set_defaults(func=cmd_sandbox)

    replay = sub.add_parser("replay", help="redo a run's work from one stage on, in a sandbox")
    replay.add_argument("run_id")
    replay.add_argument("--from", dest="stage", required=True, choices=list(get_args(ReplayStage)))
    replay.add_argument(
        "--prefix", required=True, help="the sandbox's topic prefix (cpflow sandbox up PREFIX)"
    )
    replay.add_argument("--no-certify", action="store_true", help="the replayed run certifies nothing")
    replay.add_argument("--wait", action="store_true", help="follow the replayed run to its final state")
    replay.add_argument("--timeout", type=float, default=3600.0)
    replay.set_defaults(func=cmd_replay)

    export = sub.add_parser(
        "export",
        help="copy a run's certified calibrations with a manifest and the butler commands to ingest them",
    )
    export.add_argument("run_id")
    export.add_argument("--to", help="directory (default ./cpflow-export-RUN_ID)")
    export.set_defaults(func=cmd_export)

    letters = sub.add_parser(
        "deadletters", help="list dead letters, or redrive chosen ones to their origin topic"
    )
    letters.add_argument("action", nargs="?", choices=["list", "redrive"], default="list")
    letters.add_argument("--run", help="only the letters of this run")
    letters.add_argument("--id", action="append", default=[], help="a letter's id (repeatable)")
    letters.add_argument("--json", action="store_true", help="list: as JSON")
    letters.set_defaults(func=cmd_deadletters)

    report = sub.add_parser(
        "report", help="write one self-contained HTML page with plots about a run (verification, PTC, images)"
    )
    report.add_argument("run_id")
    report.add_argument("-o", "--output", default=".", help="directory of the page <RUN_ID>.html (default .)")
    report.set_defaults(func=cmd_report)

    ingest = sub.add_parser(
        "ingest-raws",
        help="ingest raw files (the cameras' format) or directories of them into <INSTR>/raw/all",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="raw files or directories")
    ingest.add_argument(
        "--instrument", help="refuse files of any other instrument (default: each file's INSTRUME)"
    )
    ingest.add_argument(
        "--transfer",
        default="copy",
        choices=["copy", "direct", "link", "symlink", "hardlink", "relsymlink", "move", "auto"],
        help="datastore transfer mode (default copy; direct records the file where it is)",
    )
    ingest.set_defaults(func=cmd_ingest_raws)

    demo = sub.add_parser(
        "demo",
        help="start the stack, run a whole LATISS calibration run (BIAS_DARK_FLAT, defects, PTC), "
        "print a summary, stop",
    )
    demo.add_argument(
        "config", nargs="?", help="run configuration (default: the bundled LATISS BIAS_DARK_FLAT run)"
    )
    demo.add_argument("--timeout", type=float, default=1800.0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The client library's own connection errors would repeat what the CLI says in one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"cpflow: bad environment:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # what is not named below keeps its traceback
        if _dataset_type_conflict(exc):
            print(f"cpflow: {exc}", file=sys.stderr)
            return EXIT_REPOSITORY
        if (problem := _registry_problem(exc)) is not None:
            print(f"cpflow: cannot use the registry of {settings.butler_repo}: {problem}", file=sys.stderr)
            return EXIT_REPOSITORY
        if not _broker_unreachable(exc):
            raise
        print(
            f"cpflow: cannot reach the Kafka broker at {settings.kafka_bootstrap} ({type(exc).__name__}); "
            "is the stack up (cpflow stack status)?",
            file=sys.stderr,
        )
        return EXIT_BROKER


def _dataset_type_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is the repository's `~shared.butler.datasets.DatasetTypeConflict`.

    Looked up in `sys.modules`, not imported: the butler is only loaded by the commands that use it
    (a `cpflow status` starts in half the time), and if it was never loaded, this is not it.
    """
    datasets = sys.modules.get("shared.butler.datasets")
    return datasets is not None and isinstance(exc, datasets.DatasetTypeConflict)


def _registry_problem(exc: BaseException) -> str | None:
    """Why the registry database cannot be used, if that is what ``exc`` is (`shared.butler.repo`).

    In `sys.modules` only when a command loaded the butler, as for `_dataset_type_conflict`.
    """
    repo = sys.modules.get("shared.butler.repo")
    return None if repo is None else repo.registry_problem(exc)


def _broker_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker could not be reached (as opposed to a bug)."""
    return isinstance(exc, KafkaConnectionError | ConnectionError | KafkaTimeoutError) or (
        isinstance(exc, KafkaError) and "bootstrap" in str(exc).lower()
    )


if __name__ == "__main__":
    sys.exit(main())
