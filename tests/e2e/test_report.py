"""End to end: ``cpflow report`` on real runs, read as a calibration scientist and as a browser would.

Two runs on the real broker and butler: a small LATISS BIAS_DARK_FLAT run with defects and PTC (every
product made and certified) and a BIAS run with a light leak on every bias (bias fails verification).
Their pages are checked for what they must show (a section per type with its plots, the failed
tests of the faulty run as the verifier recorded them, every product's butler location), for being
self-contained (every image is an embedded PNG that decodes and is not blank), and in Debian's
headless Chromium (no console error, every image rendered).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from shared.butler.collections import run_collection
from shared.butler.repo import open_butler
from shared.butler.runrecords import read_record
from shared.records import VerificationRecord
from shared.settings import Settings
from tests.e2e.browser import load_page
from tests.e2e.common import cpflow

pytestmark = pytest.mark.broker

AMP_SHAPE = [60, 40]
TYPES = ("bias", "dark", "flat", "defects", "ptc")


@dataclass
class Page:
    """The parts of a report page the tests read."""

    path: Path
    text: str
    sections: dict[str, str] = field(default_factory=dict)
    """Section id → its HTML."""
    images: list[dict[str, str]] = field(default_factory=list)
    """Every ``<img>``'s attributes, with the id of the section it is in (``section``)."""


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.images: list[dict[str, str]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag == "section":
            self.section = values.get("id", "")
        if tag == "img":
            self.images.append({**values, "section": self.section})

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = ""


def read_page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(text)
    sections = {
        m.group(1): m.group(2) for m in re.finditer(r'<section id="([^"]+)"[^>]*>(.*?)</section>', text, re.S)
    }
    return Page(path, text, sections, parser.images)


def submit(settings: Settings, directory: Path, name: str, expect: int, **config: Any) -> str:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"instrument": "LATISS", "generate_calibrations": True, **config}))
    result = cpflow(settings, "submit", str(path), "--wait", "--timeout", "500", timeout=600)
    assert result.returncode == expect, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[0]


@pytest.fixture(scope="module")
def runs(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("report-configs")
    full = submit(
        stack,
        directory,
        "full",
        0,
        script_mode="BIAS_DARK_FLAT",
        n_bias=6,
        n_dark=5,
        exp_times_dark=10,
        n_flat=8,
        n_discard_flat=0,
        exp_times_flat=[1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0],
        do_defects=True,
        do_ptc=True,
        calib_collection="LATISS/calib/report",
        certify_calib_begin_date="2026-01-01",
        certify_calib_end_date="2027-12-31",
        simulator={"seed": 11, "amp_data_shape": AMP_SHAPE, "compress": False},
    )
    faulty = submit(
        stack,
        directory,
        "faulty",
        1,
        script_mode="BIAS",
        n_bias=6,
        calib_collection="LATISS/calib/reportfault",
        simulator={
            "seed": 12,
            "amp_data_shape": AMP_SHAPE,
            "compress": False,
            "faults": [{"kind": "light_leak", "image_type": "BIAS", "level_e": 300}],
        },
    )
    return {"full": full, "faulty": faulty}


@pytest.fixture(scope="module")
def pages(stack: Settings, runs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Page]:
    out = tmp_path_factory.mktemp("reports")
    result: dict[str, Page] = {}
    for name, run_id in runs.items():
        written = cpflow(stack, "report", run_id, "-o", str(out), timeout=300)
        assert written.returncode == 0, written.stdout + written.stderr
        path = Path(written.stdout.strip().splitlines()[-1])
        assert path == out / f"{run_id}.html"
        result[name] = read_page(path)
    return result


def decode_png(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :], validate=True)))
    assert image.format == "PNG"
    return np.asarray(image.convert("L"), dtype=float)


def test_the_page_has_a_section_per_type_with_its_plots(pages: dict[str, Page], runs: dict[str, str]) -> None:
    page = pages["full"]
    assert f"cpflow run {runs['full']}" in page.text and "SUCCEEDED" in page.text
    for calib_type in TYPES:
        assert f"type-{calib_type}" in page.sections, sorted(page.sections)
    alts = {(image["section"], image["alt"]) for image in page.images}
    for calib_type in ("bias", "dark", "flat"):
        section = f"type-{calib_type}"
        assert (section, f"{calib_type} verification statistics") in alts
        assert (section, f"{calib_type} failures per amplifier") in alts
        assert any(s == section and a.startswith(f"{calib_type} thumbnail") for s, a in alts)
        assert (section, "QA percentiles") in alts
        # The QA percentiles of every amplifier, from the combined image's header.
        qa = re.search(r'<table class="qa">(.*?)</table>', page.sections[section], re.S)
        assert qa is not None and qa.group(1).count("<tr><td>C") == 16
        assert "<th>50%</th>" in qa.group(1) and "<th>BAD pixels</th>" in qa.group(1)
    assert ("type-ptc", "PTC detector 0") in alts
    assert "turnoff" in page.sections["type-ptc"]
    assert re.search(r"Detector 0: \d+ defect boxes", page.sections["type-defects"])
    assert ("timeline", "run timeline") in alts
    # The timeline comes from the run's events: every stage published its event.
    for kind in ("frames.acquired", "calib.generated", "calib.verified", "calib.certified", "run.status"):
        assert kind in page.sections["timeline"], kind


def test_every_product_is_located_in_the_butler(
    stack: Settings, pages: dict[str, Page], runs: dict[str, str]
) -> None:
    """Each dataset of the run's collections is listed with its collection, type and URI; each
    certified calibration with its calibration collection and validity range."""
    products = pages["full"].sections["products"]
    butler = open_butler(stack.butler_repo, writeable=False)
    prefix = run_collection("LATISS", runs["full"])
    collections = [
        c for c in butler.collections.query(prefix + "*") if c == prefix or c.startswith(prefix + "/")
    ]
    refs = butler.query_all_datasets(collections, find_first=False, limit=None)
    assert len(refs) > 30
    for ref in refs:
        row = f"<tr><td>{ref.run}</td><td>{ref.datasetType.name}</td>"
        assert row in products, row
        assert str(butler.getURI(ref)) in products
    for calib_type in TYPES:
        assert f"<tr><td>LATISS/calib/report</td><td>{calib_type}</td>" in products, calib_type
    assert "[2026-01-01T00:00:00.000, 2027-12-31T00:00:00.000)" in products


def test_the_ptc_and_defects_shown_are_the_butlers(
    stack: Settings, pages: dict[str, Page], runs: dict[str, str]
) -> None:
    butler = open_butler(stack.butler_repo, writeable=False)
    collection = run_collection("LATISS", runs["full"])
    ptc = butler.get("ptc", instrument="LATISS", detector=0, collections=[collection + "/ptc"])
    section = pages["full"].sections["type-ptc"]
    for row in ptc:
        assert f"<tr><td>{row['AMPLIFIER_NAME']}</td><td>{float(row['GAIN']):.5g}</td>" in section
    defects = butler.get("defects", instrument="LATISS", detector=0, collections=[collection + "/defects"])
    assert len(defects) > 0
    assert f"Detector 0: {len(defects)} defect boxes" in pages["full"].sections["type-defects"]
    # Every combined image's thumbnail has the run's defects drawn on it.
    thumbnails = [image["alt"] for image in pages["full"].images if " thumbnail " in image["alt"]]
    assert len(thumbnails) == 3
    for alt in thumbnails:
        assert alt.endswith(f", {len(defects)} defect boxes"), alt


def test_the_failed_tests_of_a_faulty_run_are_listed(
    stack: Settings, pages: dict[str, Page], runs: dict[str, str]
) -> None:
    page = pages["faulty"]
    assert "FAILED" in page.text
    bias = page.sections["type-bias"]
    assert "verdict-FAILED" in bias
    record = read_record(
        open_butler(stack.butler_repo, writeable=False), VerificationRecord, "LATISS", runs["faulty"], "bias"
    )
    assert record is not None and record.summary is not None
    failed = record.summary.failed_tests()
    assert {"MEAN", "NOISE"} <= set(failed)
    listed = dict(re.findall(r"<li><b>(\w+)</b>: (\d+) failures</li>", bias))
    assert listed == {test: str(n) for test, n in failed.items()}
    # Each failed exposure's failure strings, as the verifier recorded them.
    for exposure, failures in record.summary.failures.items():
        assert f"<td>{exposure}</td><td>{failures[0]}" in bias
    # The healthy run lists none.
    assert "No failed tests." in pages["full"].sections["type-bias"]


def test_every_embedded_image_decodes_and_is_not_blank(pages: dict[str, Page]) -> None:
    for page in pages.values():
        # Self-contained: no script, stylesheet or image from anywhere else.
        assert not re.search(r"<(script|link|iframe)\b", page.text)
        assert not re.search(r"""(src|href)=["'](https?:|file:|//)""", page.text)
        assert len(page.images) >= 5
        for image in page.images:
            pixels = decode_png(image["src"])
            assert pixels.size > 1000, image["alt"]
            assert pixels.std() > 0, f"{image['alt']} is blank"


def test_an_unknown_run_is_an_error(stack: Settings, tmp_path: Path) -> None:
    result = cpflow(stack, "report", "20000101T000000-000000", "-o", str(tmp_path))
    assert result.returncode == 1
    assert "no run 20000101T000000-000000 in the butler" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_page_renders_in_headless_chromium(pages: dict[str, Page], tmp_path: Path) -> None:
    for name, page in pages.items():
        screenshot = tmp_path / f"report-{name}.png"
        loaded = load_page(page.path, screenshot)
        print(f"screenshot of the {name} run's report: {screenshot}")
        assert loaded.errors == []
        assert loaded.title.startswith("cpflow run ")
        assert len(loaded.images) == len(page.images)
        for image in loaded.images:
            assert image["decoded"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
            assert image["rendered"] > 0, image
            assert image["std"] > 0, f"{image['alt']} renders blank"
        shot = Image.open(screenshot)
        assert shot.size[1] > 2000  # the whole page, not the first screen
        assert np.asarray(shot.convert("L"), dtype=float).std() > 0


def test_the_browser_check_sees_a_broken_page(tmp_path: Path) -> None:
    """The control of the Chromium test: a console error, an image that does not decode and a blank
    image are each reported."""
    blank = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(blank, format="PNG")
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body>"
        '<img alt="corrupt" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==">'
        f'<img alt="blank" src="data:image/png;base64,{base64.b64encode(blank.getvalue()).decode()}">'
        "<script>console.error('boom');</script></body></html>"
    )
    loaded = load_page(page, tmp_path / "broken.png")
    assert any("boom" in error for error in loaded.errors), loaded.errors
    by_alt = {image["alt"]: image for image in loaded.images}
    assert by_alt["corrupt"]["naturalWidth"] == 0 and not by_alt["corrupt"]["decoded"]
    assert by_alt["blank"]["naturalWidth"] == 40 and by_alt["blank"]["std"] == 0
