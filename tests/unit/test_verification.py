"""Tests of the bias, dark and flat verification statistics, the cosmic-ray repair, the run merge and the
certification decision."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from services.verifier.decision import decide
from services.verifier.statistics import (
    INFORMATIONAL_TESTS,
    amp_statistics,
    bias_amp_statistics,
    detector_verification,
    flat_amp_statistics,
    flat_detector_statistics,
    flat_exposure_verification,
    merge_run,
    results_rows,
    verify_amplifiers,
    verify_bias_amplifiers,
    verify_flat_amplifiers,
    verify_flat_detector,
    with_noise_rule,
)
from shared.cosmic_rays import TooManyCosmicRays, find_and_repair
from shared.images import CalibImage, MaskPlane

AMP_SHAPE = (100, 80)
BOXES = {
    "C10": (slice(0, 100), slice(0, 80)),
    "C11": (slice(0, 100), slice(80, 160)),
    "C01": (slice(100, 200), slice(0, 80)),
    "C00": (slice(100, 200), slice(80, 160)),
}
READ_NOISE = {"C10": 7.0, "C11": 8.0, "C01": 6.5, "C00": 9.0}


def _residual(seed: int, noise_factor: dict[str, float] | None = None) -> CalibImage:
    rng = np.random.default_rng(seed)
    residual = CalibImage.empty((200, 160))
    for amp, box in BOXES.items():
        sigma = READ_NOISE[amp] * (noise_factor or {}).get(amp, 1.0)
        residual.image[box] = rng.normal(0.0, sigma, AMP_SHAPE)
    return residual


def test_pure_noise_residual_passes() -> None:
    residual = _residual(1)
    residual.image[5, 5] = 1e5  # a masked hot pixel must not count
    residual.mask[5, 5] = MaskPlane.BAD
    residual.image[6, 6] = np.nan
    residual.mask[6, 6] = MaskPlane.NO_DATA
    residual.image[150, 150] = 3_000.0  # an unmasked cosmic ray: out of the clipped NOISE
    stats = bias_amp_statistics(residual, BOXES)
    assert set(stats) == set(BOXES)
    for amp, values in stats.items():
        assert values["NOISE"] == pytest.approx(READ_NOISE[amp], rel=0.03)
        assert np.isfinite(values["MEAN"])
    assert stats["C00"]["MEAN"] > 3_000.0 / (AMP_SHAPE[0] * AMP_SHAPE[1]) - 0.5  # MEAN is unclipped
    verify = verify_bias_amplifiers(stats, READ_NOISE)
    for tests in verify.values():
        assert tests == {"MEAN": True, "NOISE": True, "SUCCESS": True}


def test_extra_noise_fails_noise_only() -> None:
    residual = _residual(2, noise_factor={"C11": 1.3})
    stats = bias_amp_statistics(residual, BOXES)
    verify = verify_bias_amplifiers(stats, READ_NOISE)
    assert verify["C11"] == {"MEAN": True, "NOISE": False, "SUCCESS": False}
    assert verify["C10"]["SUCCESS"]
    # The NOISE test is one-sided: a residual quieter than the read noise passes.
    quiet = bias_amp_statistics(_residual(3, noise_factor={"C10": 0.5}), BOXES)
    assert verify_bias_amplifiers(quiet, READ_NOISE)["C10"]["NOISE"]


def test_offset_fails_mean() -> None:
    residual = _residual(4)
    residual.image[BOXES["C01"]] += 2 * READ_NOISE["C01"]
    verify = verify_bias_amplifiers(bias_amp_statistics(residual, BOXES), READ_NOISE)
    assert verify["C01"] == {"MEAN": False, "NOISE": True, "SUCCESS": False}


def test_fully_masked_amplifier_fails() -> None:
    residual = _residual(5)
    residual.mask[BOXES["C00"]] = MaskPlane.BAD
    stats = bias_amp_statistics(residual, BOXES)
    assert np.isnan(stats["C00"]["MEAN"]) and np.isnan(stats["C00"]["NOISE"])
    assert verify_bias_amplifiers(stats, READ_NOISE)["C00"] == {
        "MEAN": False,
        "NOISE": False,
        "SUCCESS": False,
    }


def _det_results() -> dict[int, dict[str, dict]]:
    results: dict[int, dict[str, dict]] = {}
    for exposure, factor in ((101, {}), (102, {"C10": 1.3, "C00": 1.5})):
        results[exposure] = {}
        for i, det in enumerate(("R22_S00", "R22_S01")):
            noisy = factor if det == "R22_S00" else {}
            stats = bias_amp_statistics(_residual(exposure * 10 + i, noisy), BOXES)
            verify = verify_bias_amplifiers(stats, READ_NOISE)
            results[exposure][det] = detector_verification(exposure, det, stats, verify)
    return results


def test_detector_structure_and_run_merge() -> None:
    results = _det_results()
    det = results[102]["R22_S00"]
    assert set(det) == {"AMP", "VERIFY", "SUCCESS"}
    assert det["SUCCESS"] is False
    assert det["VERIFY"]["AMP"]["C10"]["NOISE"] is False
    assert results[101]["R22_S00"]["SUCCESS"] is True

    run = merge_run(results)
    assert run[101] == {"SUCCESS": True}
    assert run[102]["SUCCESS"] is False
    assert sorted(run[102]["FAILURES"]) == ["R22_S00 C00 NOISE", "R22_S00 C10 NOISE"]
    assert run["SUCCESS"] is False
    assert set(run) == {101, 102, "SUCCESS"}

    rows = results_rows(results)
    table = Table(rows=rows)
    assert len(table) == 2 * 2 * len(BOXES)
    assert table.colnames == [
        "exposure",
        "detector",
        "amplifier",
        "BIAS_MEAN",
        "BIAS_NOISE",
        "BIAS_VERIFY_MEAN",
        "BIAS_VERIFY_NOISE",
    ]
    failing = table[~table["BIAS_VERIFY_NOISE"]]
    assert sorted(failing["amplifier"]) == ["C00", "C10"]
    assert set(failing["exposure"]) == {102}

    with pytest.raises(ValueError):
        detector_verification(1, "R22_S00", {"C10": {}}, {"C11": {}})


def test_latiss_failure_string() -> None:
    stats = {"C10": {"MEAN": 0.0, "NOISE": 20.0}}
    verify = verify_bias_amplifiers(stats, {"C10": 9.0})
    run = merge_run({7: {"RXX_S00": detector_verification(7, "RXX_S00", stats, verify)}})
    assert run[7]["FAILURES"] == ["RXX_S00 C10 NOISE"]


def _run(failures_per_exposure: dict[int, int], test: str = "NOISE", detector: str = "RXX_S00") -> dict:
    run: dict = {}
    for exposure, n in failures_per_exposure.items():
        if n == 0:
            run[exposure] = {"SUCCESS": True}
        else:
            run[exposure] = {
                "SUCCESS": False,
                "FAILURES": [f"{detector} C{10 + i % 8:02d} {test}" for i in range(n)],
            }
    run["SUCCESS"] = all(v["SUCCESS"] for v in run.values())
    return run


def test_decision_uses_n_exposures_not_n_plus_one() -> None:
    run = _run({1: 8, 2: 8, 3: 0})  # 3 exposures, 2 of which fail on NOISE
    decision = decide(run, threshold=8, n_detectors=1)
    assert decision.n_exposures == 3
    assert decision.failed_exposures == [1, 2]
    assert decision.thresholds["MAX_FAILED_EXPOSURES_THRESHOLD"] == 2
    assert decision.thresholds["FINAL_NUMBER_OF_FAILED_EXPOSURES"] == 2
    assert decision.certify is False

    # The reference script's arithmetic counts the SUCCESS key: int(len(run)/2)+1 = 3 → certify.
    reference_max_failed = int(len(run) / 2) + 1
    assert reference_max_failed == 3
    assert not (len(decision.failed_exposures) >= reference_max_failed)

    summary = decision.summary()
    assert "not certified" in summary
    assert "NOISE: 8" in summary
    assert "MAX_FAILED_EXPOSURES_THRESHOLD: 2" in summary


def test_decision_counts_and_per_exposure_threshold() -> None:
    run = _run({1: 7, 2: 8, 3: 0, 4: 0})
    run[1]["FAILURES"].append("RXX_S00 C10 MEAN")
    decision = decide(run, threshold=8, n_detectors=1)
    assert decision.counts == {1: {"NOISE": 7, "MEAN": 1}, 2: {"NOISE": 8}}
    assert decision.failed_exposures == [2]
    assert decision.certify is True  # 1 failed exposure < 4 // 2 + 1
    assert "certified, but some tests failed" in decision.summary()


def test_thresholds_scale_with_detectors() -> None:
    # 9 detectors: an exposure fails at threshold x (9 // 2 + 1) = 8 x 5 = 40 pooled failures.
    below = decide(_run({1: 39, 2: 39}, detector="R22_S11"), threshold=8, n_detectors=9)
    assert below.thresholds["MAX_FAILED_DETECTORS_THRESHOLD"] == 5
    assert below.thresholds["MAX_FAILED_TESTS_PER_EXPOSURE_THRESHOLD"] == 40
    assert below.failed_exposures == [] and below.certify is True
    at = decide(_run({1: 40, 2: 40}, detector="R22_S11"), threshold=8, n_detectors=9)
    assert at.failed_exposures == [1, 2] and at.certify is False
    assert decide(_run({1: 8, 2: 8}), threshold=8, n_detectors=1).certify is False


def test_successful_run_certifies() -> None:
    decision = decide(_run({1: 0, 2: 0}), threshold=8, n_detectors=1)
    assert decision.certify is True
    assert decision.counts == {} and decision.failed_exposures == []
    assert "certified" in decision.summary()
    with pytest.raises(ValueError):
        decide(_run({1: 0}), threshold=0, n_detectors=1)


def test_end_to_end_from_residuals() -> None:
    run = merge_run(_det_results())
    # Only 2 failures in the failing exposure: far below 8 x (2 // 2 + 1) = 16.
    decision = decide(run, threshold=8, n_detectors=2)
    assert decision.counts == {102: {"NOISE": 2}}
    assert decision.certify is True
    # With threshold 1 exposure 102 fails (2 ≥ 1 x 2), but 1 of 2 exposures is not a majority (2).
    strict = decide(run, threshold=1, n_detectors=2)
    assert strict.failed_exposures == [102]
    assert strict.certify is True


# --------------------------------------------------------------------------------------------------
# Cosmic rays

_DIRS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _inject_tracks(
    image: np.ndarray, rng: np.random.Generator, n: int, spacing: int = 12
) -> list[list[tuple[int, int]]]:
    """Inject ``n`` cosmic-ray tracks of 1-4 pixels of 1000-3000 e⁻ on a grid (no overlaps)."""
    tracks: list[list[tuple[int, int]]] = []
    ny, nx = image.shape
    cells = [(y, x) for y in range(6, ny - 6, spacing) for x in range(6, nx - 6, spacing)]
    for index in rng.choice(len(cells), size=n, replace=False):
        y0, x0 = cells[index]
        dy, dx = _DIRS[rng.integers(len(_DIRS))]
        track = [(y0 + k * dy, x0 + k * dx) for k in range(int(rng.integers(1, 5)))]
        for y, x in track:
            image[y, x] += rng.uniform(1_000.0, 3_000.0)
        tracks.append(track)
    return tracks


def test_cosmic_rays_found_and_repaired() -> None:
    rng = np.random.default_rng(11)
    sigma = 7.0
    clean = rng.normal(0.0, sigma, (320, 320))
    image = clean.copy()
    tracks = _inject_tracks(image, rng, 80)
    repaired, cr_mask, n_cr = find_and_repair(image, None, sigma)

    found = sum(all(cr_mask[p] for p in track) for track in tracks)
    assert found / len(tracks) >= 0.95
    assert len(tracks) * 0.95 <= n_cr <= len(tracks) + 3
    track_pixels = tuple(np.array([p for track in tracks for p in track]).T)
    assert np.all(np.abs(repaired[track_pixels]) < 5 * sigma)
    assert repaired.std() == pytest.approx(clean.std(), rel=0.02)
    assert image.std() > 5 * sigma  # what the repair removed
    # Pixels not flagged are untouched; the flagged ones are grown around the tracks.
    assert np.array_equal(repaired[~cr_mask], image[~cr_mask])
    assert cr_mask.sum() >= 9 * len(tracks)


def test_cosmic_rays_no_false_detections_on_noise() -> None:
    rng = np.random.default_rng(12)
    image = rng.normal(0.0, 7.0, (320, 320))  # ~10^5 pixels
    repaired, cr_mask, n_cr = find_and_repair(image, None, 7.0)
    assert n_cr <= 3
    assert cr_mask.sum() <= 9 * 3
    assert np.array_equal(repaired[~cr_mask], image[~cr_mask])


def test_cosmic_rays_spare_psf_like_sources_and_masked_pixels() -> None:
    rng = np.random.default_rng(13)
    image = rng.normal(0.0, 7.0, (100, 100))
    yy, xx = np.mgrid[:100, :100]
    s = 3.5 / 2.3548  # a star broader than the 3-px PSF
    image += 3_000.0 * np.exp(-((yy - 50) ** 2 + (xx - 50) ** 2) / (2 * s * s))
    mask = np.zeros(image.shape, dtype=bool)
    image[20, 20] = 5_000.0  # a masked hot pixel: neither flagged nor changed
    mask[20, 20] = True
    image[70, 30] = np.nan
    repaired, cr_mask, n_cr = find_and_repair(image, mask, 7.0)
    assert n_cr == 0 and not cr_mask.any()
    assert repaired[20, 20] == 5_000.0 and np.isnan(repaired[70, 30])
    # The same hot pixel unmasked is a cosmic ray.
    _, cr_mask, n_cr = find_and_repair(image, None, 7.0)
    assert n_cr == 1 and cr_mask[20, 20] and cr_mask.sum() == 9
    with pytest.raises(ValueError):
        find_and_repair(image, None, 0.0)


def test_too_many_cosmic_rays() -> None:
    rng = np.random.default_rng(14)
    image = rng.normal(0.0, 7.0, (200, 200))
    hits = rng.choice(image.size, size=int(0.02 * image.size), replace=False)
    image.flat[hits] += 2_000.0  # 2 % of the pixels, ~15 % once grown
    with pytest.raises(TooManyCosmicRays) as info:
        find_and_repair(image, None, 7.0)
    assert info.value.n_flagged > 0.05 * info.value.n_pixels


# --------------------------------------------------------------------------------------------------
# Bias and dark: MEAN, NOISE, CR_NOISE, PROCESSING, READ_NOISE_CONSISTENT

GAINS = {"C10": 1.5, "C11": 1.6, "C01": 1.4, "C00": 1.5}
FULL_TESTS = {
    "MEAN",
    "NOISE",
    "CR_NOISE",
    "PROCESSING",
    "SUCCESS",
    "READ_NOISE_CONSISTENT",
    "NOISE_CPFLOW",
    "NOISE_CP_VERIFY",
}


def _overscan_adu(factor: float = 1.0) -> dict[str, float]:
    return {amp: factor * READ_NOISE[amp] / GAINS[amp] for amp in BOXES}


def test_clean_residual_passes_all_tests() -> None:
    residual = _residual(21)
    stats = amp_statistics(residual, BOXES, overscan_noise_adu=_overscan_adu())
    for amp, values in stats.items():
        assert set(values) == {"MEAN", "NOISE", "CR_NOISE", "N_CR", "READ_NOISE_ADU", "FORCE_FAILURE"}
        assert values["N_CR"] <= 1 and values["FORCE_FAILURE"] == 0.0
        assert values["CR_NOISE"] == pytest.approx(values["NOISE"], rel=0.01)
        assert values["READ_NOISE_ADU"] == pytest.approx(READ_NOISE[amp] / GAINS[amp])
    verify = verify_amplifiers(stats, READ_NOISE, GAINS)
    for tests in verify.values():
        assert set(tests) == FULL_TESTS
        assert all(tests.values())
    # The thin wrapper keeps the bias-only statistics.
    assert set(bias_amp_statistics(residual, BOXES)["C10"]) == {"MEAN", "NOISE"}


def test_cosmic_rays_in_residual_noise_and_cr_noise() -> None:
    rng = np.random.default_rng(22)
    residual = _residual(22)
    for box in BOXES.values():
        # Few enough not to fail the (unclipped) MEAN test: each adds ~2000/8000 e⁻ per pixel.
        _inject_tracks(residual.image[box], rng, 4)
    stats = amp_statistics(residual, BOXES, overscan_noise_adu=_overscan_adu())
    verify = verify_amplifiers(stats, READ_NOISE, GAINS)
    for amp, box in BOXES.items():
        values = stats[amp]
        assert values["NOISE"] == pytest.approx(READ_NOISE[amp], rel=0.03)  # clipped: CRs excluded
        assert values["N_CR"] == 4
        raw_std = float(residual.image[box].std(ddof=1))
        # Without the repair, CR_NOISE would compare the clipped noise with a stdev inflated by CRs.
        assert abs(values["NOISE"] - raw_std) / raw_std > 0.05
        assert abs(values["NOISE"] - values["CR_NOISE"]) / values["CR_NOISE"] <= 0.05
        assert verify[amp]["NOISE"] and verify[amp]["CR_NOISE"] and verify[amp]["SUCCESS"]

    # A bright source that is not sharp (no cosmic ray) is not repaired: CR_NOISE fails.
    glow = _residual(23)
    yy, xx = np.mgrid[:100, :80]
    glow.image[BOXES["C10"]] += 2_000.0 * np.exp(-((yy - 50) ** 2 + (xx - 40) ** 2) / (2 * 2.5**2))
    glow_stats = amp_statistics(glow, BOXES)
    glow_verify = verify_amplifiers(glow_stats, READ_NOISE, GAINS)
    assert glow_stats["C10"]["N_CR"] == 0
    assert glow_verify["C10"]["CR_NOISE"] is False and glow_verify["C10"]["SUCCESS"] is False
    assert glow_verify["C11"]["SUCCESS"] is True


def test_excess_noise_and_offset_fail_dark_tests() -> None:
    residual = _residual(24, noise_factor={"C11": 1.3})
    residual.image[BOXES["C01"]] += 2 * READ_NOISE["C01"]
    stats = amp_statistics(residual, BOXES, overscan_noise_adu=_overscan_adu())
    verify = verify_amplifiers(stats, READ_NOISE, GAINS)
    failed = {amp: sorted(t for t, v in tests.items() if not v) for amp, tests in verify.items()}
    # NOISE_CPFLOW and NOISE_CP_VERIFY (informational) are the two rules side by side.
    noisy = ["NOISE", "NOISE_CPFLOW", "NOISE_CP_VERIFY", "SUCCESS"]
    assert failed == {"C10": [], "C11": noisy, "C01": ["MEAN", "SUCCESS"], "C00": []}


def test_force_failure_fails_processing() -> None:
    rng = np.random.default_rng(25)
    residual = _residual(25)
    amp = residual.image[BOXES["C00"]]
    hits = rng.choice(amp.size, size=int(0.03 * amp.size), replace=False)
    amp.flat[hits] += 2_000.0
    stats = amp_statistics(residual, BOXES)
    assert stats["C00"]["FORCE_FAILURE"] == 1.0 and np.isnan(stats["C00"]["CR_NOISE"])
    verify = verify_amplifiers(stats, READ_NOISE, GAINS)
    assert verify["C00"]["PROCESSING"] is False and verify["C00"]["SUCCESS"] is False
    assert verify["C10"]["PROCESSING"] is True
    run = merge_run({5: {"R22_S11": detector_verification(5, "R22_S11", stats, verify)}})
    assert "R22_S11 C00 PROCESSING" in run[5]["FAILURES"]


def test_read_noise_consistent_is_informational() -> None:
    residual = _residual(26, noise_factor={"C11": 1.3})
    overscan = _overscan_adu()
    overscan["C10"] *= 1.2  # overscan noise 20 % above the PTC read noise
    overscan["C11"] *= 1.2
    del overscan["C00"]  # no overscan noise: not finite → False
    stats = amp_statistics(residual, BOXES, overscan_noise_adu=overscan)
    assert np.isnan(stats["C00"]["READ_NOISE_ADU"])
    verify = verify_amplifiers(stats, READ_NOISE, GAINS)
    assert verify["C10"]["READ_NOISE_CONSISTENT"] is False and verify["C10"]["SUCCESS"] is True
    assert verify["C00"]["READ_NOISE_CONSISTENT"] is False and verify["C00"]["SUCCESS"] is True
    assert verify["C01"]["READ_NOISE_CONSISTENT"] is True
    assert verify_amplifiers(stats, READ_NOISE)["C01"]["READ_NOISE_CONSISTENT"] is False  # no gains
    order = list(verify["C10"])
    assert order.index("READ_NOISE_CONSISTENT") > order.index("SUCCESS")  # added after SUCCESS
    assert "READ_NOISE_CONSISTENT" in INFORMATIONAL_TESTS

    det = detector_verification(9, "R22_S11", stats, verify)
    run = merge_run({9: {"R22_S11": det}})
    assert run[9]["FAILURES"] == ["R22_S11 C11 NOISE"]  # C11 fails NOISE; C10/C11 RN inconsistent
    clean = _residual(27)
    clean_verify = verify_amplifiers(
        amp_statistics(clean, BOXES, overscan_noise_adu=overscan), READ_NOISE, GAINS
    )
    clean_det = detector_verification(10, "R22_S11", amp_statistics(clean, BOXES), clean_verify)
    assert clean_det["SUCCESS"] is True
    assert merge_run({10: {"R22_S11": clean_det}}) == {10: {"SUCCESS": True}, "SUCCESS": True}

    rows = results_rows({9: {"R22_S11": det}}, stage="DARK")
    table = Table(rows=rows)
    assert table.colnames == [
        "exposure",
        "detector",
        "amplifier",
        "DARK_MEAN",
        "DARK_NOISE",
        "DARK_CR_NOISE",
        "DARK_N_CR",
        "DARK_FORCE_FAILURE",
        "DARK_READ_NOISE_ADU",
        "DARK_VERIFY_MEAN",
        "DARK_VERIFY_NOISE",
        "DARK_VERIFY_CR_NOISE",
        "DARK_VERIFY_PROCESSING",
        "DARK_VERIFY_READ_NOISE_CONSISTENT",
        "DARK_VERIFY_NOISE_CPFLOW",
        "DARK_VERIFY_NOISE_CP_VERIFY",
    ]
    assert list(table["DARK_VERIFY_READ_NOISE_CONSISTENT"]) == [False, False, True, False]
    with pytest.raises(ValueError):
        results_rows({9: {"R22_S11": det}}, stage="SKY")


# --------------------------------------------------------------------------------------------------
# Flats

FLAT_LEVEL = 10_000.0


def _flat_fielded(
    seed: int, level: float = FLAT_LEVEL, noise_factor: float = 1.0, read_noise: float = 0.0
) -> CalibImage:
    rng = np.random.default_rng(seed)
    image = CalibImage.empty((200, 160))
    for box in BOXES.values():
        shot = rng.poisson(level, AMP_SHAPE).astype(np.float64) - level
        image.image[box] = level + noise_factor * shot + rng.normal(0.0, read_noise or 1e-12, AMP_SHAPE)
    return image


def test_flat_noise_shot_noise_limited() -> None:
    stats = flat_amp_statistics(_flat_fielded(31), BOXES)
    for values in stats.values():
        assert values["MEAN"] == pytest.approx(FLAT_LEVEL, rel=1e-3)
        assert values["NOISE"] == pytest.approx(np.sqrt(FLAT_LEVEL), rel=0.03)
    assert all(tests == {"NOISE": True, "SUCCESS": True} for tests in verify_flat_amplifiers(stats).values())

    noisy = flat_amp_statistics(_flat_fielded(32, noise_factor=2.0), BOXES)
    for rule in (verify_flat_amplifiers(noisy), verify_flat_amplifiers(noisy, strict=True)):
        assert all(tests == {"NOISE": False, "SUCCESS": False} for tests in rule.values())


def test_flat_noise_with_read_noise_at_low_signal() -> None:
    # 100 e⁻ with 8 e⁻ read noise: NOISE ≈ sqrt(164) = 12.8 > sqrt(100): cp_verify's rule fails,
    # cpflow's rule with the read noise passes; 1.2x more noise fails cpflow's rule too.
    rn = {amp: 8.0 for amp in BOXES}
    stats = flat_amp_statistics(_flat_fielded(33, level=100.0, read_noise=8.0), BOXES)
    assert stats["C10"]["NOISE"] == pytest.approx(np.sqrt(164.0), rel=0.03)
    assert not any(t["NOISE"] for t in verify_flat_amplifiers(stats, strict=True).values())
    assert all(t["NOISE"] for t in verify_flat_amplifiers(stats, rn).values())
    assert not any(t["NOISE"] for t in verify_flat_amplifiers(stats).values())  # read noise unknown
    noisy = flat_amp_statistics(_flat_fielded(34, level=100.0, noise_factor=1.2, read_noise=1.2 * 8.0), BOXES)
    assert not any(t["NOISE"] for t in verify_flat_amplifiers(noisy, rn).values())
    bad = {"C10": {"MEAN": -1.0, "NOISE": 1.0}, "C11": {"MEAN": float("nan"), "NOISE": 1.0}}
    assert not any(t["SUCCESS"] for t in verify_flat_amplifiers(bad).values())


def test_flat_detector_scatter() -> None:
    image = _flat_fielded(35)
    det = flat_detector_statistics(flat_amp_statistics(image, BOXES))
    assert det["MEAN"] == pytest.approx(FLAT_LEVEL, rel=1e-3)
    assert det["SCATTER"] < 10.0
    assert verify_flat_detector(det) == {"SCATTER": True}

    image.image[BOXES["C11"]] *= 1.2  # one amplifier 20 % off
    off = flat_detector_statistics(flat_amp_statistics(image, BOXES))
    assert off["SCATTER"] / off["MEAN"] == pytest.approx(0.1 / 1.05, rel=0.01)
    assert verify_flat_detector(off) == {"SCATTER": False}
    assert verify_flat_detector({"MEAN": FLAT_LEVEL, "SCATTER": float("nan")}) == {"SCATTER": False}


def test_flat_exposure_scatter_is_relative() -> None:
    base = np.linspace(-1.0, 1.0, 9)
    offsets = 0.01 * base / base.std()  # detector means spread by 1 % (std)
    means = {f"R22_S{i // 3}{i % 3}": FLAT_LEVEL * (1 + o) for i, o in enumerate(offsets)}
    result = flat_exposure_verification(means)
    assert result["EXP"]["N_DETECTORS"] == 9
    assert result["EXP"]["STDEV"] == pytest.approx(0.01 * FLAT_LEVEL, rel=0.01)  # absolute, ~100 e⁻
    assert result["EXP"]["SCATTER"] == pytest.approx(0.01, rel=0.01)  # relative
    assert not result["EXP"]["STDEV"] <= 0.05  # cp_verify's absolute rule would fail
    assert result["VERIFY"] == {"SCATTER": True} and result["SUCCESS"] is True

    spread = flat_exposure_verification({**means, "R22_S22": 1.3 * FLAT_LEVEL})
    assert spread["EXP"]["SCATTER"] > 0.05 and spread["VERIFY"] == {"SCATTER": False}
    single = flat_exposure_verification({"RXX_S00": FLAT_LEVEL})  # LATISS
    assert single["EXP"]["STDEV"] == 0.0 and single["SUCCESS"] is True
    assert flat_exposure_verification({})["SUCCESS"] is False


# --------------------------------------------------------------------------------------------------
# Merge strings at the three levels and the decision


def _flat_run(exposure: int, detectors: int, amp_gain_error: float, det_means_spread: float):
    """Flat verification of one exposure from flat-fielded images; the first detector is faulty."""
    det_results: dict[str, dict] = {}
    det_means: dict[str, float] = {}
    for i in range(detectors):
        name = f"R22_S{i // 3}{i % 3}"
        image = _flat_fielded(exposure * 100 + i, level=FLAT_LEVEL * (1 + det_means_spread * (i - 4) / 4))
        if i == 0:
            image.image[BOXES["C10"]] = FLAT_LEVEL + 2.0 * (image.image[BOXES["C10"]] - FLAT_LEVEL)
            image.image[BOXES["C11"]] += amp_gain_error * FLAT_LEVEL  # an offset: the noise is kept
        amp_stats = flat_amp_statistics(image, BOXES)
        det_stats = flat_detector_statistics(amp_stats)
        det_results[name] = detector_verification(
            exposure,
            name,
            amp_stats,
            verify_flat_amplifiers(amp_stats),
            det_stats=det_stats,
            det_verify=verify_flat_detector(det_stats),
        )
        det_means[name] = det_stats["MEAN"]
    return det_results, flat_exposure_verification(det_means)


def test_merge_run_three_levels_and_decision() -> None:
    det_201, exp_201 = _flat_run(201, 9, amp_gain_error=0.5, det_means_spread=0.2)
    det_202, exp_202 = _flat_run(202, 9, amp_gain_error=0.0, det_means_spread=0.01)
    first = det_201["R22_S00"]
    assert set(first) == {"AMP", "DET", "VERIFY", "SUCCESS"}
    assert first["VERIFY"]["DET"] == {"SCATTER": False} and first["SUCCESS"] is False
    assert det_201["R22_S01"]["SUCCESS"] is True
    assert exp_201["VERIFY"] == {"SCATTER": False} and exp_202["VERIFY"] == {"SCATTER": True}

    run = merge_run({201: det_201, 202: det_202}, {201: exp_201, 202: exp_202})
    assert run[201] == {"SUCCESS": False, "FAILURES": ["SCATTER", "R22_S00 SCATTER", "R22_S00 C10 NOISE"]}
    assert run[202] == {"SUCCESS": False, "FAILURES": ["R22_S00 C10 NOISE"]}
    assert run["SUCCESS"] is False

    # An exposure whose detectors all pass still fails on its group test.
    clean = {name: res for name, res in det_202.items() if name != "R22_S00"}
    only_group = merge_run({301: clean}, {301: flat_exposure_verification({"A": 1.0, "B": 2.0})})
    assert only_group == {301: {"SUCCESS": False, "FAILURES": ["SCATTER"]}, "SUCCESS": False}
    assert merge_run({302: clean}, {302: flat_exposure_verification({"A": 1.0})})["SUCCESS"] is True

    # The decision pools the exposure-level and detector-level SCATTER under one test type.
    decision = decide(run, threshold=1, n_detectors=9)
    assert decision.counts == {201: {"SCATTER": 2, "NOISE": 1}, 202: {"NOISE": 1}}
    assert decision.thresholds["MAX_FAILED_TESTS_PER_EXPOSURE_THRESHOLD"] == 5
    assert decision.failed_exposures == [] and decision.certify is True
    strict = decide(run, threshold=1, n_detectors=1)  # 1 failure per type suffices
    assert strict.failed_exposures == [201, 202] and strict.certify is False
    two = decide(run, threshold=2, n_detectors=1)  # SCATTER reaches 2 only in 201
    assert two.failed_exposures == [201] and two.certify is True  # 1 of 2 exposures < 2 // 2 + 1

    rows = results_rows({201: det_201}, stage="FLAT", exposure_results={201: exp_201})
    table = Table(rows=rows)
    assert len(table) == 9 * len(BOXES)
    assert table.colnames == [
        "exposure",
        "detector",
        "amplifier",
        "FLAT_MEAN",
        "FLAT_NOISE",
        "FLAT_VERIFY_NOISE",
        "FLAT_DET_MEAN",
        "FLAT_DET_SCATTER",
        "FLAT_DET_VERIFY_SCATTER",
        "FLAT_EXP_MEAN",
        "FLAT_EXP_STDEV",
        "FLAT_EXP_SCATTER",
        "FLAT_EXP_N_DETECTORS",
        "FLAT_EXP_VERIFY_SCATTER",
    ]
    assert sorted(table[~table["FLAT_DET_VERIFY_SCATTER"]]["amplifier"]) == sorted(BOXES)
    assert not any(table["FLAT_EXP_VERIFY_SCATTER"])


def test_ptc_read_noise_used_only_where_well_measured() -> None:
    from astropy.table import Table

    from services.verifier.verification import usable_ptc_noise

    table = Table(
        {
            "AMPLIFIER_NAME": ["C00", "C01", "C02", "C03", "C04"],
            "NOISE": [8.0, 9.0, 7.0, float("nan"), 6.0],
            "NOISE_ERR": [0.2, 2.5, 0.1, 0.1, 0.3],
            "BAD_AMPS": [["C02"]] * 5,
        }
    )
    # C01: 28 % error (no low-signal pairs); C02: bad fit; C03: no value. They keep the nominal.
    assert usable_ptc_noise(table) == {"C00": 8.0, "C04": 6.0}


# --------------------------------------------------------------------------------------------------
# The two NOISE rules (issue 13)


def _noise_stats(ratio: float) -> dict[str, dict[str, float]]:
    return {
        amp: {
            "MEAN": 0.0,
            "NOISE": ratio * rn,
            "CR_NOISE": ratio * rn,
            "FORCE_FAILURE": 0.0,
            "READ_NOISE_ADU": 1.0,
        }
        for amp, rn in READ_NOISE.items()
    }


def test_noise_rules_side_by_side_and_the_chosen_one_decides() -> None:
    """6 % over the read noise, 1 % over the expected noise of a residual against a 20-frame reference."""
    stats = _noise_stats(1.06)
    expected = {amp: 1.05 * rn for amp, rn in READ_NOISE.items()}
    cpflow = verify_amplifiers(stats, READ_NOISE, GAINS, expected_noise=expected)
    reference = verify_amplifiers(stats, READ_NOISE, GAINS, expected_noise=expected, noise_rule="cp_verify")
    for amp in READ_NOISE:
        assert cpflow[amp]["NOISE_CPFLOW"] and not cpflow[amp]["NOISE_CP_VERIFY"]
        assert cpflow[amp]["NOISE"] and cpflow[amp]["SUCCESS"]
        assert reference[amp]["NOISE_CPFLOW"] and not reference[amp]["NOISE_CP_VERIFY"]
        assert not reference[amp]["NOISE"] and not reference[amp]["SUCCESS"]
    # Without an expected noise (a frame in its own reference) both rules are cp_verify's.
    alone = verify_amplifiers(stats, READ_NOISE, GAINS)
    assert not any(t["NOISE"] or t["NOISE_CPFLOW"] for t in alone.values())
    with pytest.raises(ValueError, match="unknown NOISE rule 'strict'"):
        verify_amplifiers(stats, READ_NOISE, GAINS, noise_rule="strict")


def test_the_other_rule_gives_its_own_decision() -> None:
    stats = _noise_stats(1.06)
    expected = {amp: 1.05 * rn for amp, rn in READ_NOISE.items()}
    verify = verify_amplifiers(stats, READ_NOISE, GAINS, expected_noise=expected)
    det_results = {e: {"R22_S11": detector_verification(e, "R22_S11", stats, verify)} for e in (1, 2, 3)}
    chosen = merge_run(det_results)
    assert chosen["SUCCESS"] is True
    other = with_noise_rule(det_results, "cp_verify")
    merged = merge_run(other)
    assert merged["SUCCESS"] is False
    assert sorted(merged[1]["FAILURES"]) == sorted(f"R22_S11 {amp} NOISE" for amp in READ_NOISE)
    assert not decide(merged, threshold=1, n_detectors=1).certify
    assert merge_run(with_noise_rule(other, "cpflow")) == chosen
    assert det_results[1]["R22_S11"]["SUCCESS"] is True  # the input is not modified


def _combined(n: int, scale: float, shape: tuple[int, int], level: float = 0.0) -> CalibImage:
    calib = CalibImage.empty(shape)
    calib.image[:] = level
    for i in range(n):
        calib.header[f"HIERARCH CPP_INPUT_{i}"] = 1000 + i
        calib.header[f"HIERARCH CPP_INPUT_SCALE_{i}"] = scale
    calib.header["NCOMBINE"] = n
    return calib


def test_expected_residual_noise_internal_is_the_read_noise_external_the_formula() -> None:
    from types import SimpleNamespace

    from services.verifier.expected_noise import bias_residual_noise, dark_residual_noise
    from services.verifier.verification import expected_residual_noise
    from shared.instruments import get_instrument
    from shared.isr import IsrResult

    geometry = get_instrument("LSSTComCam").detector(1).with_data_shape(20, 10)
    rn = {a.name: a.read_noise for a in geometry.amplifiers}
    result = IsrResult(
        image=CalibImage.empty(geometry.shape),
        overscan_fits={a.name: {"serial": "MEAN_PER_ROW", "parallel": "SMOOTH"} for a in geometry.amplifiers},
    )
    bias = _combined(20, 1.0, geometry.shape)
    dark = _combined(20, 30.0, geometry.shape, level=0.5)
    internal = SimpleNamespace(header={"EXPID": 1005}, dark_time=30.0)
    external = SimpleNamespace(header={"EXPID": 2001}, dark_time=30.0)
    assert expected_residual_noise("bias", {"bias": bias}, internal, geometry, result, rn) == rn
    got = expected_residual_noise("bias", {"bias": bias}, external, geometry, result, rn)
    assert got == pytest.approx({a: bias_residual_noise(v, 20, serial_pixels=58) for a, v in rn.items()})
    applied = {"bias": bias, "dark": dark}
    assert expected_residual_noise("dark", applied, internal, geometry, result, rn) == rn
    got = expected_residual_noise("dark", applied, external, geometry, result, rn)
    want = {
        a: dark_residual_noise(
            v, dark_time=30.0, reference_dark_times=[30.0] * 20, n_bias=20, dark_current=0.5, serial_pixels=58
        )
        for a, v in rn.items()
    }
    assert got == pytest.approx(want)
    # A reference that does not say what it was made of: cp_verify's read noise.
    assert (
        expected_residual_noise(
            "bias", {"bias": CalibImage.empty(geometry.shape)}, external, geometry, result, rn
        )
        == rn
    )
