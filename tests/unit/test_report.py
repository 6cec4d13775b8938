"""The run report reads what the generator and verifier write, and draws every figure it can be given.

The contracts: the QA percentile keywords the generator writes into a combined image's header are
the ones the report parses; the amplifier boundaries drawn on a thumbnail are the generator's amp
boxes for every frame size; a results table without some statistics (external verification, a
failed processing) still gives a figure; failed points are drawn in red.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from PIL import Image

from cpflow.report import (
    amp_geometry,
    fig_failures,
    fig_ptc,
    fig_qa_percentiles,
    fig_thumbnail,
    fig_timeline,
    fig_verification,
    png_base64,
    qa_percentiles,
)
from services.generator.combine import QA_PERCENTILES
from services.generator.combine import qa_percentiles as written_percentiles
from shared.images import CalibImage
from shared.instruments import get_instrument

AMPS = [a.name for a in get_instrument("LATISS").detector(0).amplifiers]


def pixels(fig: object) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64(fig)))).convert("RGB"), dtype=float)  # type: ignore[arg-type]


def red_pixels(image: np.ndarray) -> int:
    """Pixels of the failed-point red (#d62728), give or take antialiasing."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r > 180) & (g < 80) & (b < 80)).sum())


@pytest.mark.parametrize("shape", [(60, 40), (200, 128), (2000, 509)])
def test_amp_boundaries_are_the_generators_amp_boxes(shape: tuple[int, int]) -> None:
    nominal = get_instrument("LATISS").detector(0)
    expected = nominal.with_data_shape(*shape) if shape != (2000, 509) else nominal
    image_shape = expected.shape
    geometry = amp_geometry("LATISS", 0, image_shape)
    assert {a.name: a.detector_slice for a in geometry.amplifiers} == {
        a.name: a.detector_slice for a in expected.amplifiers
    }


def test_the_qa_keywords_the_generator_writes_are_the_ones_read() -> None:
    detector = get_instrument("LATISS").detector(0).with_data_shape(20, 10)
    rng = np.random.default_rng(3)
    image = CalibImage.empty(detector.shape)
    image.image[:] = rng.normal(100.0, 5.0, detector.shape)
    boxes = {a.name: a.detector_slice for a in detector.amplifiers}
    header = fits.Header()
    for key, value in written_percentiles(image, boxes, "flat").items():
        header[f"HIERARCH {key}"] = value
    image.header = header
    levels, bad = qa_percentiles(image)
    assert sorted(levels) == sorted(AMPS)
    for amp, box in boxes.items():
        assert sorted(levels[amp]) == sorted(QA_PERCENTILES)
        assert levels[amp][50] == pytest.approx(float(np.median(image.image[box])))
        assert bad[amp] == 0
    assert pixels(fig_qa_percentiles(levels, "flat")).std() > 0


def reddish_pixels(image: np.ndarray) -> int:
    """Pixels of any red, dark or bright (the failures map's colour scale)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int((r - (g + b) / 2 > 60).sum())


def _bias_table(n_exposures: int = 3, failing_amp: str | None = None) -> Table:
    rows = []
    for exposure in range(n_exposures):
        for amp in AMPS:
            noise = 30.0 if amp == failing_amp else 8.0
            rows.append(
                {
                    "exposure": 100 + exposure,
                    "detector": "RXX_S00",
                    "amplifier": amp,
                    "BIAS_MEAN": 0.1,
                    "BIAS_NOISE": noise,
                    "BIAS_CR_NOISE": noise,
                    "BIAS_READ_NOISE_E": 8.0,
                    "BIAS_VERIFY_MEAN": True,
                    "BIAS_VERIFY_NOISE": amp != failing_amp,
                    "BIAS_VERIFY_CR_NOISE": True,
                }
            )
    return Table(rows=rows)


def test_failed_amplifiers_are_drawn_red() -> None:
    clean = red_pixels(pixels(fig_verification("bias", _bias_table())))
    faulty = red_pixels(pixels(fig_verification("bias", _bias_table(failing_amp="C13"))))
    assert faulty > clean + 20
    # The failures map: the failing amplifier's NOISE cell is dark red, on top of the colour bar.
    assert (
        reddish_pixels(pixels(fig_failures("bias", _bias_table(failing_amp="C13"))))
        > reddish_pixels(pixels(fig_failures("bias", _bias_table()))) + 200
    )


def test_a_table_without_some_statistics_still_gives_figures() -> None:
    """External verification has no READ_NOISE_E or CR_NOISE columns in some set-ups; flats no DET."""
    table = _bias_table()
    table.remove_columns(["BIAS_CR_NOISE", "BIAS_READ_NOISE_E", "BIAS_VERIFY_CR_NOISE"])
    assert pixels(fig_verification("bias", table)).std() > 0
    flat = Table(
        rows=[
            {"exposure": 1, "detector": "RXX_S00", "amplifier": a, "FLAT_MEAN": math.nan, "FLAT_NOISE": 3.0}
            for a in AMPS
        ]
    )
    assert pixels(fig_verification("flat", flat)).std() > 0


def test_ptc_thumbnail_and_timeline_figures_are_drawn() -> None:
    means = np.array([[1000.0, 2000.0, 4000.0, 8000.0, np.nan]] * 2)
    table = Table(
        {
            "AMPLIFIER_NAME": ["C00", "C01"],
            "GAIN": [1.1, 1.2],
            "NOISE": [8.0, 9.0],
            "PTC_TURNOFF": [4000.0, 8000.0],
            "RAW_MEANS": means,
            "RAW_VARS": means / 1.1,
            "EXP_ID_MASK": np.array([[True, True, True, False, False], [True] * 4 + [False]]),
            "FINAL_MODEL_VARS": means / 1.1,
        }
    )
    assert pixels(fig_ptc(table, 0)).std() > 0
    detector = get_instrument("LATISS").detector(0).with_data_shape(20, 10)
    image = CalibImage.empty(detector.shape)
    image.image[:] = np.random.default_rng(1).normal(0, 1, detector.shape)
    defects = Table({"x0": [3], "y0": [0], "width": [1], "height": [40]})
    with_defects = red_pixels(pixels(fig_thumbnail(image, detector, defects, "bias")))
    assert with_defects > red_pixels(pixels(fig_thumbnail(image, detector, None, "bias")))
    events = [
        {"type": "run.requested", "time": "2026-12-02T10:00:00+00:00"},
        {"type": "frames.acquired", "image_type": "BIAS", "time": "2026-12-02T10:00:05+00:00"},
        {
            "type": "calib.generated",
            "calib_type": "bias",
            "duration_s": 3.0,
            "time": "2026-12-02T10:00:09+00:00",
        },
        {
            "type": "calib.verified",
            "calib_type": "bias",
            "verdict": "FAILED",
            "time": "2026-12-02T10:00:12+00:00",
        },
        {"type": "run.status", "stage": "run", "state": "FAILED", "time": "2026-12-02T10:00:13+00:00"},
    ]
    assert red_pixels(pixels(fig_timeline(events))) > 0
    assert pixels(fig_timeline([])).std() > 0
