"""The dependency chain and the certifier's outcome rules, as pure functions: no broker, no butler.

The generator's walk is replayed here exactly as its handler runs it (`next_step` for each type
tried, `follow_ups` after each record), with a fake build and verdicts chosen per test, so every
possible outcome of a prerequisite is tried.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from services.certifier.certification import (
    CertificationResult,
    final_state,
    outcome_of_certification,
    outcome_without_certification,
)
from services.generator.readiness import (
    ChainSnapshot,
    dependants,
    follow_ups,
    next_step,
    skipped_record,
    triggered_by_frames,
    types_from_frames,
)
from shared.records import (
    AcquisitionManifest,
    CalibOutcome,
    GenerationRecord,
    VerificationRecord,
    VerificationSummary,
)
from shared.runconfig import RunConfiguration, validate_run_configuration

RUN = "20261202T120000-abcdef"


def config(**overrides: Any) -> RunConfiguration:
    data: dict[str, Any] = {
        "instrument": "LATISS",
        "script_mode": "BIAS_DARK_FLAT",
        "generate_calibrations": True,
        "do_defects": True,
        "do_ptc": True,
        "calib_collection": "LATISS/calib/test",
    }
    data.update(overrides)
    return validate_run_configuration(data)


def manifest(image_type: str) -> AcquisitionManifest:
    return AcquisitionManifest(
        image_type=image_type,  # type: ignore[arg-type]
        exposures=[1, 2, 3],
        detectors=[0],
        physical_filter="empty~empty",
        raw_collection="LATISS/raw/all",
    )


def generated(calib_type: str, outcome: str = "ok") -> GenerationRecord:
    return GenerationRecord(
        instrument="LATISS",
        calib_type=calib_type,
        detectors=[0],
        generated=outcome == "ok",
        outcome=outcome,  # type: ignore[arg-type]
        reason=None if outcome == "ok" else "boom",
    )


def verified(calib_type: str, verdict: str) -> VerificationRecord:
    return VerificationRecord(
        instrument="LATISS",
        calib_type=calib_type,
        detectors=[0],
        generated=True,
        verdict=verdict,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- single decisions


def test_nothing_is_built_before_its_frames_are_in() -> None:
    step = next_step(config(), RUN, ChainSnapshot(), "bias")
    assert (step.action, step.reason) == ("wait", "BIAS frames are not in yet")


def test_a_bias_is_built_from_its_frames_alone() -> None:
    step = next_step(config(), RUN, ChainSnapshot(manifests={"BIAS": manifest("BIAS")}), "bias")
    assert step.action == "build" and step.sources == {}
    assert step.manifest is not None and step.manifest.exposures == [1, 2, 3]


def test_a_dark_waits_for_this_runs_bias_to_pass_verification() -> None:
    frames = {"BIAS": manifest("BIAS"), "DARK": manifest("DARK")}
    waiting = next_step(config(), RUN, ChainSnapshot(manifests=frames), "dark")
    assert (waiting.action, waiting.reason) == ("wait", "bias not generated yet")
    built = ChainSnapshot(manifests=frames, generated={"bias": generated("bias")})
    assert next_step(config(), RUN, built, "dark").reason == "bias not verified yet"
    passed = ChainSnapshot(
        manifests=frames, generated={"bias": generated("bias")}, verified={"bias": verified("bias", "PASSED")}
    )
    step = next_step(config(), RUN, passed, "dark")
    assert step.action == "build"
    source = step.sources["bias"]
    assert (source.kind, source.collections) == ("run", (f"LATISS/runs/{RUN}/bias",))


@pytest.mark.parametrize(
    ("bias_generation", "bias_verdict", "reason"),
    [
        ("failed", None, "dark not built: bias was not generated (boom)"),
        ("skipped", None, "dark not built: bias was not generated (boom)"),
        ("ok", "FAILED", "dark not built: bias failed verification"),
        ("ok", "NOT_RUN", "dark not built: bias failed verification"),
    ],
)
def test_a_dark_is_skipped_when_its_bias_is_not_usable(
    bias_generation: str, bias_verdict: str | None, reason: str
) -> None:
    snapshot = ChainSnapshot(
        manifests={"BIAS": manifest("BIAS"), "DARK": manifest("DARK")},
        generated={"bias": generated("bias", bias_generation)},
        verified={"bias": verified("bias", bias_verdict)} if bias_verdict else {},
    )
    step = next_step(config(), RUN, snapshot, "dark")
    assert (step.action, step.reason) == ("skip", reason)


def test_without_verification_a_generated_prerequisite_is_usable_at_once() -> None:
    snapshot = ChainSnapshot(
        manifests={"BIAS": manifest("BIAS"), "DARK": manifest("DARK")}, generated={"bias": generated("bias")}
    )
    assert next_step(config(do_verify=False), RUN, snapshot, "dark").action == "build"


def test_a_prerequisite_the_run_does_not_take_is_the_certified_one() -> None:
    dark_only = config(
        script_mode="DARK", do_defects=False, do_ptc=False, input_collections_dark="LATISS/calib/x"
    )
    step = next_step(dark_only, RUN, ChainSnapshot(manifests={"DARK": manifest("DARK")}), "dark")
    assert step.action == "build"
    source = step.sources["bias"]
    assert (source.kind, source.collections) == ("certified", ("LATISS/calib/test", "LATISS/calib/x"))


def test_a_type_with_a_record_is_done() -> None:
    record = generated("bias")
    step = next_step(config(), RUN, ChainSnapshot(generated={"bias": record}), "bias")
    assert step.action == "done" and step.record == record


def test_what_each_event_makes_worth_trying() -> None:
    full = config()
    assert triggered_by_frames(full, "BIAS") == ["bias"]
    assert triggered_by_frames(full, "FLAT") == ["flat", "defects", "ptc"]
    assert triggered_by_frames(config(do_ptc=False), "FLAT") == ["flat", "defects", "gain"]
    assert types_from_frames(full, "FLAT") == ["flat", "defects", "ptc"]
    assert types_from_frames(full, "DARK") == ["dark"]
    assert dependants("bias", full) == ["dark", "flat", "ptc"]
    assert dependants("dark", full) == ["flat", "defects", "ptc"]
    # With verification a built type waits for its verdict; a failure stops its dependants now.
    assert follow_ups(full, generated("bias")) == []
    assert follow_ups(full, generated("bias", "failed")) == ["dark", "flat", "ptc"]
    assert follow_ups(config(do_verify=False), generated("bias")) == ["dark", "flat", "ptc"]


# ----------------------------------------------------------------------------- the whole walk


class ChainReplay:
    """The generator's and verifier's rules over an in-memory snapshot, one event at a time."""

    def __init__(self, run_config: RunConfiguration, verdicts: dict[str, str], failing: set[str]) -> None:
        self.config = run_config
        self.verdicts = verdicts
        self.failing = failing
        self.manifests: dict[str, AcquisitionManifest] = {}
        self.generated: dict[str, GenerationRecord] = {}
        self.verified: dict[str, VerificationRecord] = {}
        self.verifications: deque[str] = deque()

    def snapshot(self) -> ChainSnapshot:
        return ChainSnapshot(dict(self.manifests), dict(self.generated), dict(self.verified))

    def walk(self, calib_types: list[str]) -> None:
        todo = deque(calib_types)
        while todo:
            calib_type = todo.popleft()
            step = next_step(self.config, RUN, self.snapshot(), calib_type)
            if step.action in ("done", "wait"):
                continue
            if step.action == "skip":
                record = skipped_record(self.config, calib_type, step.reason, detectors=[0])
            else:
                record = generated(calib_type, "failed" if calib_type in self.failing else "ok")
            self.generated[calib_type] = record
            self.verifications.append(calib_type)
            todo.extend(follow_ups(self.config, record))

    def frames(self, image_type: str) -> None:
        self.manifests[image_type] = manifest(image_type)
        self.walk(triggered_by_frames(self.config, image_type))
        self.settle()

    def settle(self) -> None:
        """The verifier answers every generation; its verdict triggers the dependants."""
        while self.verifications:
            calib_type = self.verifications.popleft()
            record = self.generated[calib_type]
            tested = (
                record.outcome == "ok" and self.config.do_verify and calib_type in ("bias", "dark", "flat")
            )
            verdict = self.verdicts.get(calib_type, "PASSED") if tested else "NOT_RUN"
            self.verified[calib_type] = verified(calib_type, verdict)
            self.walk(dependants(calib_type, self.config))

    def run(self) -> dict[str, GenerationRecord]:
        for image_type in self.config.image_types:
            self.frames(image_type)
        return self.generated


def test_a_clean_run_builds_every_type_once_in_chain_order() -> None:
    records = ChainReplay(config(), {}, set()).run()
    assert {t: r.outcome for t, r in records.items()} == {t: "ok" for t in config().calib_types}


@pytest.mark.parametrize(
    ("verdicts", "failing", "expected"),
    [
        (
            {"bias": "FAILED"},
            set(),
            {"bias": "ok", "dark": "skipped", "flat": "skipped", "defects": "skipped", "ptc": "skipped"},
        ),
        (
            {"dark": "FAILED"},
            set(),
            {"bias": "ok", "dark": "ok", "flat": "skipped", "defects": "skipped", "ptc": "skipped"},
        ),
        (
            {"flat": "FAILED"},
            set(),
            {"bias": "ok", "dark": "ok", "flat": "ok", "defects": "skipped", "ptc": "ok"},
        ),
        (
            {},
            {"bias"},
            {"bias": "failed", "dark": "skipped", "flat": "skipped", "defects": "skipped", "ptc": "skipped"},
        ),
        (
            {},
            {"dark"},
            {"bias": "ok", "dark": "failed", "flat": "skipped", "defects": "skipped", "ptc": "skipped"},
        ),
        ({}, {"flat"}, {"bias": "ok", "dark": "ok", "flat": "failed", "defects": "skipped", "ptc": "ok"}),
        ({}, {"ptc"}, {"bias": "ok", "dark": "ok", "flat": "ok", "defects": "ok", "ptc": "failed"}),
    ],
)
def test_every_prerequisite_outcome_ends_every_type(
    verdicts: dict[str, str], failing: set[str], expected: dict[str, str]
) -> None:
    records = ChainReplay(config(), verdicts, failing).run()
    assert {t: r.outcome for t, r in records.items()} == expected
    for calib_type, record in records.items():
        if record.outcome == "skipped":
            assert record.reason and record.reason.startswith(f"{calib_type} not built: ")


def test_without_verification_the_chain_runs_on_generation_alone() -> None:
    records = ChainReplay(config(do_verify=False), {"bias": "FAILED"}, set()).run()
    assert all(r.outcome == "ok" for r in records.values())


# ----------------------------------------------------------------------------- certification


def verification(calib_type: str = "bias", **fields: Any) -> VerificationRecord:
    values: dict[str, Any] = {
        "instrument": "LATISS",
        "calib_type": calib_type,
        "detectors": [0],
        "generated": True,
        "verdict": "PASSED",
    }
    values.update(fields)
    return VerificationRecord(**values)


def test_a_passed_generated_calibration_is_certified() -> None:
    assert outcome_without_certification(verification()) is None
    assert outcome_without_certification(verification("defects", verdict="NOT_RUN")) is None


def test_upstream_failures_end_the_type_with_their_reason() -> None:
    decided = outcome_without_certification(
        verification(verdict="NOT_RUN", outcome="skipped", reason="no bias")
    )
    assert decided is not None
    outcome, report = decided
    assert (outcome.success, outcome.stage, outcome.summary) == (False, "generate", "no bias")
    assert (report.certified, report.outcome, report.reason) == (False, "skipped", "no bias")
    decided = outcome_without_certification(verification(verdict="NOT_RUN", outcome="failed", reason="x"))
    assert decided is not None and decided[0].stage == "verify"


def test_a_failed_verdict_names_the_failed_tests() -> None:
    summary = VerificationSummary(
        certify=False, n_exposures=3, counts={"1": {"MEAN": 2, "NOISE": 1}, "2": {"MEAN": 1}}
    )
    decided = outcome_without_certification(verification(verdict="FAILED", summary=summary))
    assert decided is not None
    outcome, report = decided
    assert outcome.summary == "bias failed verification (MEAN ×3, NOISE ×1); not certified"
    assert outcome.failed_tests == {"MEAN": 3, "NOISE": 1} and not report.certified


def test_external_verification_and_gains_succeed_without_certification() -> None:
    decided = outcome_without_certification(verification(generated=False))
    assert decided is not None
    assert (
        decided[0].success
        and decided[0].summary == "bias frames passed external verification; nothing to certify"
    )
    assert decided[1].reason == "external verification"
    decided = outcome_without_certification(verification("gain", verdict="NOT_RUN"))
    assert decided is not None and decided[0].success and decided[0].stage == "generate"
    assert decided[1].reason == "gains are reported, not certified"


def test_certification_outcomes() -> None:
    dataset = "0b6d9a4e-2f0c-4d7e-9a51-3c2b8e1f4a77"
    result = CertificationResult(
        "certified", {"0": dataset}, "2026-01-01T00:00:00.000", "2027-01-01T00:00:00.000"
    )
    outcome, report = outcome_of_certification(verification(), "LATISS/calib/test", result)
    assert outcome.success and outcome.certified and report.certified and report.dataset_ids == {"0": dataset}
    assert outcome.summary == (
        "bias certified into LATISS/calib/test for [2026-01-01T00:00:00.000, 2027-01-01T00:00:00.000)"
    )
    outcome, report = outcome_of_certification(verification(), "LATISS/calib/test", LookupError("nothing"))
    assert not outcome.success and outcome.stage == "certify" and report.outcome == "failed"
    assert outcome.summary == "certification of bias failed: nothing"


def test_the_run_fails_with_one_error_per_unsuccessful_type() -> None:
    ok = CalibOutcome(calib_type="bias", success=True, stage="certify", summary="certified")
    bad = CalibOutcome(calib_type="dark", success=False, stage="verify", summary="dark failed verification")
    assert final_state([ok]) == ("SUCCEEDED", [])
    assert final_state([ok, bad]) == ("FAILED", ["verify: dark failed verification"])


def test_external_verification_never_builds_when_a_verdict_comes_before_the_frames_event() -> None:
    """The race CI met: the bias verdict walks to the dark while the dark frames' event is still queued."""
    external = config(script_mode="BIAS_DARK", generate_calibrations=False, do_defects=False, do_ptc=False)
    frames = {"BIAS": manifest("BIAS"), "DARK": manifest("DARK")}
    verdict = ChainSnapshot(
        manifests=frames, generated={"bias": generated("bias")}, verified={"bias": verified("bias", "PASSED")}
    )
    step = next_step(external, RUN, verdict, "dark")
    assert step.action == "wait" and "external verification" in step.reason
    # The same snapshot with generation on builds the dark from the run's bias.
    assert next_step(
        config(script_mode="BIAS_DARK", do_defects=False, do_ptc=False), RUN, verdict, "dark"
    ).action == ("build")


def test_external_verification_skips_the_types_whose_frames_never_came() -> None:
    """CI: with external verification a failed acquisition left the run without a final state."""
    external = config(script_mode="BIAS_DARK", generate_calibrations=False, do_defects=False, do_ptc=False)
    failed = manifest("BIAS").model_copy(update={"outcome": "failed", "reason": "2 of 3 listed bias frames"})
    snapshot = ChainSnapshot(manifests={"BIAS": failed}, generated={}, verified={})
    step = next_step(external, RUN, snapshot, "bias")
    assert step.action == "skip" and step.reason == "2 of 3 listed bias frames"
    record = skipped_record(external, "bias", step.reason, detectors=[0], image_type="BIAS")
    assert follow_ups(external, record) == ["dark"]
