"""Whether a calibration that failed some verification tests is still certified.

The rule is the reference script's ``count_failed_verification_tests``
(make_calibrations_script.md §3.4): failures are pooled per exposure over all detectors and
amplifiers and counted per test type (the last word of each failure string); an exposure fails
if any test type has at least ``threshold x (n_detectors // 2 + 1)`` failures; the calibration is
rejected if a majority of the exposures fail.

cpflow's fix: the majority is taken over the N exposures, ``N // 2 + 1``. The reference uses
``len(verify_stats)``, which also counts the ``"SUCCESS"`` key, i.e. N + 1 (with 3 exposures
of which 2 fail it certifies; cpflow rejects).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VerificationDecision", "decide", "exposure_keys"]


def exposure_keys(run_stats: Mapping[Any, Any]) -> list[Any]:
    """The per-exposure keys of a run-level result (every key but SUCCESS/RUN/VERIFY)."""
    return [key for key in run_stats if key not in ("SUCCESS", "RUN", "VERIFY")]


@dataclass(frozen=True)
class VerificationDecision:
    """Outcome of `decide`.

    Attributes
    ----------
    certify : `bool`
        Whether the calibration may be certified.
    failed_exposures : `list` [`int`]
        Exposures with at least one test type at or over the per-exposure threshold.
    counts : `dict` [`int`, `dict` [`str`, `int`]]
        Per exposure with failures, the number of failures per test type.
    thresholds : `dict` [`str`, `int`]
        The reference script's five threshold values (empty when the run passed outright).
    n_exposures : `int`
        Number of exposures verified.
    """

    certify: bool
    failed_exposures: list[int] = field(default_factory=list)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    thresholds: dict[str, int] = field(default_factory=dict)
    n_exposures: int = 0

    def summary(self) -> str:
        """A human-readable report in the spirit of the reference script's log summary."""
        if not self.counts:
            return (
                f"All {self.n_exposures} exposures passed every verification test; "
                "the calibration is certified."
            )
        lines = [
            f"Exposures with failed verification tests: {sorted(self.counts)}",
            f"Exposures over the failure threshold: {self.failed_exposures}",
            "Failures per test type per exposure:",
        ]
        for exposure, per_test in sorted(self.counts.items()):
            detail = ", ".join(f"{test}: {n}" for test, n in sorted(per_test.items()))
            lines.append(f"  {exposure}: {detail}")
        lines.append("Thresholds:")
        lines.extend(f"  {name}: {value}" for name, value in self.thresholds.items())
        t = self.thresholds
        lines.append(
            "An exposure fails when, for some test type, at least "
            f"{t['MAX_FAILURES_PER_DETECTOR_PER_TEST_TYPE_THRESHOLD']} failures per detector in a majority "
            f"of the detectors ({t['MAX_FAILED_DETECTORS_THRESHOLD']}), i.e. "
            f"{t['MAX_FAILED_TESTS_PER_EXPOSURE_THRESHOLD']} failures pooled over the exposure, occur. The "
            f"calibration is rejected when at least {t['MAX_FAILED_EXPOSURES_THRESHOLD']} of the "
            f"{self.n_exposures} exposures fail; {t['FINAL_NUMBER_OF_FAILED_EXPOSURES']} failed."
        )
        if self.certify:
            lines.append(
                "Verdict: the calibration passes the overall criteria and is certified, "
                "but some tests failed."
            )
        else:
            lines.append("Verdict: the calibration failed verification and is not certified.")
        return "\n".join(lines)


def decide(run_stats: Mapping[Any, Any], threshold: int, n_detectors: int) -> VerificationDecision:
    """Apply the verification decision rule to a run-level result (see `merge_run`).

    Parameters
    ----------
    run_stats : `~collections.abc.Mapping`
        ``{exposure: {"SUCCESS": bool[, "FAILURES": [...]]}, ..., "SUCCESS": bool}``.
    threshold : `int`
        Failures of one test type per detector (``number_verification_tests_threshold_<type>``).
    n_detectors : `int`
        Number of detectors of the run.
    """
    if threshold < 1 or n_detectors < 1:
        raise ValueError(f"threshold ({threshold}) and n_detectors ({n_detectors}) must be positive")
    exposures = exposure_keys(run_stats)
    n_exposures = len(exposures)
    if run_stats.get("SUCCESS") is True:
        return VerificationDecision(certify=True, n_exposures=n_exposures)

    max_failed_detectors = n_detectors // 2 + 1
    per_exposure_threshold = threshold * max_failed_detectors
    max_failed_exposures = n_exposures // 2 + 1
    counts: dict[int, dict[str, int]] = {}
    failed: list[int] = []
    for exposure in exposures:
        failures = run_stats[exposure].get("FAILURES")
        if not failures:
            continue
        counter = Counter(str(failure).split()[-1] for failure in failures)
        counts[int(exposure)] = dict(counter)
        if any(n >= per_exposure_threshold for n in counter.values()):
            failed.append(int(exposure))
    if not counts:
        return VerificationDecision(certify=True, n_exposures=n_exposures)
    thresholds = {
        "MAX_FAILURES_PER_DETECTOR_PER_TEST_TYPE_THRESHOLD": threshold,
        "MAX_FAILED_DETECTORS_THRESHOLD": max_failed_detectors,
        "MAX_FAILED_TESTS_PER_EXPOSURE_THRESHOLD": per_exposure_threshold,
        "MAX_FAILED_EXPOSURES_THRESHOLD": max_failed_exposures,
        "FINAL_NUMBER_OF_FAILED_EXPOSURES": len(failed),
    }
    return VerificationDecision(
        certify=len(failed) < max_failed_exposures,
        failed_exposures=sorted(failed),
        counts=counts,
        thresholds=thresholds,
        n_exposures=n_exposures,
    )
