"""``cpflow report RUN_ID``: one self-contained HTML page about a run, with plots.

What a calibration scientist looks at before trusting a night's calibrations, read from the butler
(the authority) and, for the timeline, from the run's events:

- per calibration type, the verification statistics per amplifier against their thresholds (points
  that failed their test in red, as the verifier stored them in ``verify<Type>Results``), the
  failures per amplifier and test, and the failed tests of the decision (``cpflowVerification``);
- the photon transfer curve per amplifier (variance against mean, the points used and rejected, the
  fitted model, the turnoff), from the ``ptc`` table;
- a thumbnail of each combined image (bias, dark, flat) with its amplifiers and the run's defects;
- the QA percentiles the generator writes into each combined image's header;
- the run's timeline per stage, from its events;
- where every product is in the butler (collection, dataset type, data id, URI), and where each
  certified one is (calibration collection, validity range);
- the accepted run configuration.

Every plot is drawn with matplotlib's Agg backend into a PNG embedded as base64: the page has no
external assets. One function per figure (``fig_*``), each returning a `~matplotlib.figure.Figure`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
from astropy.table import Table
from lsst.daf.butler import Butler, DatasetRef
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cpflow.runview import RunView, build_views
from services.verifier.statistics import FLAT_NOISE_TOLERANCE, FLAT_SCATTER_TOLERANCE, NOISE_TOLERANCE
from shared.butler import datasets
from shared.butler.collections import collection_exists, run_collection, type_collection
from shared.butler.runrecords import instrument_of_run, read_record
from shared.calibtypes import CALIB_TYPES, COMBINED_TYPES
from shared.images import CalibImage
from shared.instruments import Detector, get_instrument
from shared.records import CalibOutcome, GenerationRecord, VerificationRecord

__all__ = [
    "Product",
    "ReportData",
    "collect",
    "fig_failures",
    "fig_ptc",
    "fig_qa_percentiles",
    "fig_thumbnail",
    "fig_timeline",
    "fig_verification",
    "find_run",
    "render_html",
    "write_report",
]

STAGES = ("submit", "acquire", "generate", "verify", "certify", "run")
"""Rows of the timeline, in the order a run goes through them."""
_STAGE_OF_EVENT = {
    "run.requested": "submit",
    "run.cancel": "submit",
    "frames.acquired": "acquire",
    "calib.generated": "generate",
    "calib.verified": "verify",
    "calib.certified": "certify",
}
_PASS, _FAIL, _LIMIT = "#1f77b4", "#d62728", "#ff7f0e"
_QA_KEY = re.compile(r"^LSST CALIB (\w+) (\w+) DISTRIBUTION (\d+)-PCT$")
_BADPIX_KEY = re.compile(r"^LSST CALIB (\w+) (\w+) BADPIX-NUM$")


# --------------------------------------------------------------------------------------------------
# What the report shows, read from the butler


@dataclass
class Product:
    """One dataset of the run: where it is in the butler."""

    collection: str
    dataset_type: str
    data_id: dict[str, Any]
    uri: str
    validity: str = ""


@dataclass
class CombinedImage:
    calib_type: str
    data_id: dict[str, Any]
    image: CalibImage


@dataclass
class TypeData:
    """Everything the butler holds about one calibration type of the run."""

    calib_type: str
    generation: GenerationRecord | None = None
    verification: VerificationRecord | None = None
    outcome: CalibOutcome | None = None
    results: Table | None = None
    images: list[CombinedImage] = field(default_factory=list)
    tables: dict[int, Table] = field(default_factory=dict)
    """Defects or PTC table per detector."""


@dataclass
class ReportData:
    run_id: str
    instrument: str
    config: dict[str, Any]
    types: dict[str, TypeData]
    products: list[Product]
    events: list[dict[str, Any]]
    view: RunView | None
    notes: list[str] = field(default_factory=list)

    @property
    def defects(self) -> dict[int, Table]:
        return self.types["defects"].tables if "defects" in self.types else {}


def find_run(butler: Butler, run_id: str) -> str | None:
    """The instrument of ``run_id`` (whose run collection holds its configuration), or `None`."""
    return instrument_of_run(butler, run_id)


def _data_id(ref: DatasetRef) -> dict[str, Any]:
    return {key: ref.dataId[key] for key in ref.dataId.dimensions.required}


def _products(butler: Butler, instrument: str, run_id: str, types: Mapping[str, TypeData]) -> list[Product]:
    """Every dataset in the run's collections, then every certified one in its calibration collection."""
    top = run_collection(instrument, run_id)
    collections = [c for c in butler.collections.query(top + "*") if c == top or c.startswith(top + "/")]
    refs = butler.query_all_datasets(collections, find_first=False, limit=None) if collections else []
    products = [
        Product(ref.run, ref.datasetType.name, _data_id(ref), str(butler.getURI(ref)))
        for ref in sorted(refs, key=lambda r: (r.run, r.datasetType.name, str(r.dataId)))
    ]
    for data in types.values():
        outcome = data.outcome
        if outcome is None or not outcome.certified or not outcome.calib_collection:
            continue
        for dataset_id in outcome.dataset_ids.values():
            ref = butler.get_dataset(dataset_id)
            if ref is None:
                continue
            products.append(
                Product(
                    outcome.calib_collection,
                    ref.datasetType.name,
                    _data_id(ref),
                    str(butler.getURI(ref)),
                    validity=f"[{outcome.begin}, {outcome.end})",
                )
            )
    return products


def _read_type(butler: Butler, instrument: str, run_id: str, calib_type: str) -> TypeData | None:
    collection = type_collection(instrument, run_id, calib_type)
    if not collection_exists(butler, collection):
        return None
    data = TypeData(
        calib_type,
        generation=read_record(butler, GenerationRecord, instrument, run_id, calib_type),
        verification=read_record(butler, VerificationRecord, instrument, run_id, calib_type),
        outcome=read_record(butler, CalibOutcome, instrument, run_id, calib_type),
    )
    if calib_type in COMBINED_TYPES:
        results = butler.query_datasets(
            datasets.verify_results(calib_type), collections=[collection], explain=False
        )
        if results:
            data.results = butler.get(results[0])
    if calib_type in (*COMBINED_TYPES, datasets.DEFECTS, datasets.PTC):
        refs = butler.query_datasets(calib_type, collections=[collection], explain=False)
        for ref in sorted(refs, key=lambda r: str(r.dataId)):
            value = butler.get(ref)
            if isinstance(value, CalibImage):
                data.images.append(CombinedImage(calib_type, _data_id(ref), value))
            elif isinstance(value, Table):
                data.tables[int(ref.dataId["detector"])] = value
    return data


def collect(butler: Butler, run_id: str, events: Sequence[dict[str, Any]] = ()) -> ReportData:
    """Read what the report shows of ``run_id`` from ``butler`` (and its ``events``, for the timeline).

    Raises
    ------
    LookupError
        If the butler has no run ``run_id``.
    """
    instrument = find_run(butler, run_id)
    if instrument is None:
        raise LookupError(f"no run {run_id} in the butler (no collection <instrument>/runs/{run_id})")
    config_ref = butler.query_datasets(
        datasets.RUN_CONFIG, collections=[run_collection(instrument, run_id)], explain=False
    )
    config = dict(butler.get(config_ref[0])) if config_ref else {}
    types: dict[str, TypeData] = {}
    for calib_type in CALIB_TYPES:
        data = _read_type(butler, instrument, run_id, calib_type)
        if data is not None:
            types[calib_type] = data
    events = [e for e in events if e.get("run_id") == run_id]
    return ReportData(
        run_id=run_id,
        instrument=instrument,
        config=config,
        types=types,
        products=_products(butler, instrument, run_id, types),
        events=list(events),
        view=build_views(list(events)).get(run_id),
    )


def amp_geometry(instrument: str, detector_id: int, shape: tuple[int, int]) -> Detector:
    """The detector's geometry for an assembled image of ``shape`` (simulated frames are smaller)."""
    detector = get_instrument(instrument).detector(detector_id)
    amp = detector.amplifiers[0]
    rows_of_amps = detector.shape[0] // amp.data_rows
    cols_of_amps = detector.shape[1] // amp.data_cols
    data_rows, data_cols = shape[0] // rows_of_amps, shape[1] // cols_of_amps
    if (data_rows, data_cols) == (amp.data_rows, amp.data_cols):
        return detector
    return detector.with_data_shape(data_rows, data_cols)


# --------------------------------------------------------------------------------------------------
# Figures


def _column(table: Table, name: str) -> np.ndarray | None:
    return np.asarray(table[name]) if name in table.colnames else None


def _amp_axis(table: Table) -> tuple[list[str], np.ndarray]:
    """The amplifier names in table order of first appearance, and each row's x position (jittered)."""
    amps = [str(a) for a in table["amplifier"]]
    names = list(dict.fromkeys(amps))
    exposures = [int(e) for e in table["exposure"]]
    order = {e: i for i, e in enumerate(dict.fromkeys(exposures))}
    n = max(len(order), 1)
    jitter = np.array([(order[e] - (n - 1) / 2) / (n * 2.5) for e in exposures])
    return names, np.array([names.index(a) for a in amps], dtype=float) + jitter


def _scatter_test(
    ax: Any, x: np.ndarray, y: np.ndarray, passed: np.ndarray | None, title: str, ylabel: str
) -> None:
    ok = np.ones(len(y), dtype=bool) if passed is None else passed.astype(bool)
    ax.scatter(x[ok], y[ok], s=10, color=_PASS, label="passed", zorder=3)
    if (~ok).any():
        ax.scatter(x[~ok], y[~ok], s=14, color=_FAIL, marker="x", label="failed", zorder=4)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def _amp_ticks(ax: Any, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_xlim(-0.7, len(names) - 0.3)


def fig_verification(calib_type: str, table: Table) -> Figure:
    """Per amplifier (one point per exposure), each verification statistic against its threshold.

    Bias and dark (DMTN-101 4.2–4.4 / 5.2–5.4): NOISE against ``(1 + tol)·RN`` (RN: the read noise
    the test used), ``|MEAN|/NOISE`` against 1, ``|NOISE − CR_NOISE|/CR_NOISE`` against tol. Flat:
    ``NOISE/sqrt(MEAN + RN²)`` against ``1 + tol``, and per exposure the detector scatter of the
    amplifier means against its tolerance. Colours come from the stored test results.
    """
    stage = calib_type.upper()
    names, x = _amp_axis(table)

    def col(name: str) -> np.ndarray:
        values = _column(table, f"{stage}_{name}")
        return np.full(len(table), np.nan) if values is None else values.astype(float)

    def verdict(name: str) -> np.ndarray | None:
        return _column(table, f"{stage}_VERIFY_{name}")

    if calib_type == "flat":
        fig = Figure(figsize=(11, 3.6), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
        mean, noise, rn = col("MEAN"), col("NOISE"), col("READ_NOISE_E")
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = noise / np.sqrt(mean + np.nan_to_num(rn) ** 2)
        _scatter_test(ax1, x, ratio, verdict("NOISE"), "NOISE / sqrt(MEAN + RN²)", "ratio")
        ax1.axhline(
            1 + FLAT_NOISE_TOLERANCE, color=_LIMIT, ls="--", label=f"limit {1 + FLAT_NOISE_TOLERANCE:g}"
        )
        _amp_ticks(ax1, names)
        ax1.legend(fontsize=7)
        exposures = [int(e) for e in table["exposure"]]
        firsts = sorted({e: i for i, e in reversed(list(enumerate(exposures)))}.values())
        det_mean, det_scatter = col("DET_MEAN")[firsts], col("DET_SCATTER")[firsts]
        det_pass = _column(table, f"{stage}_DET_VERIFY_SCATTER")
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = det_scatter / det_mean
        xs = np.arange(len(firsts), dtype=float)
        _scatter_test(
            ax2,
            xs,
            rel,
            None if det_pass is None else det_pass[firsts],
            "detector SCATTER / MEAN of the amplifier means",
            "relative scatter",
        )
        ax2.axhline(FLAT_SCATTER_TOLERANCE, color=_LIMIT, ls="--", label=f"limit {FLAT_SCATTER_TOLERANCE:g}")
        ax2.set_xticks(xs)
        ax2.set_xticklabels([str(exposures[i])[-5:] for i in firsts], rotation=90, fontsize=7)
        ax2.set_xlabel("exposure (last digits)", fontsize=8)
        ax2.legend(fontsize=7)
        fig.suptitle(f"{calib_type}: verification statistics per amplifier", fontsize=10)
        return fig

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    mean, noise, cr_noise, rn = col("MEAN"), col("NOISE"), col("CR_NOISE"), col("READ_NOISE_E")
    _scatter_test(ax1, x, noise, verdict("NOISE"), "NOISE vs (1 + tol)·RN", "e⁻")
    limit = (1 + NOISE_TOLERANCE) * rn
    amp_index = np.round(x).astype(int)
    for i in range(len(names)):
        values = limit[amp_index == i]
        if values.size and np.isfinite(values).any():
            ax1.hlines(
                np.nanmax(values), i - 0.4, i + 0.4, color=_LIMIT, lw=2, label="limit" if i == 0 else None
            )
    _amp_ticks(ax1, names)
    ax1.legend(fontsize=7)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_ratio = np.abs(mean) / noise
        cr_ratio = np.abs(noise - cr_noise) / cr_noise
    _scatter_test(ax2, x, mean_ratio, verdict("MEAN"), "|MEAN| / NOISE", "ratio")
    ax2.axhline(1.0, color=_LIMIT, ls="--", label="limit 1")
    _amp_ticks(ax2, names)
    ax2.legend(fontsize=7)
    _scatter_test(ax3, x, cr_ratio, verdict("CR_NOISE"), "|NOISE − CR_NOISE| / CR_NOISE", "ratio")
    ax3.axhline(NOISE_TOLERANCE, color=_LIMIT, ls="--", label=f"limit {NOISE_TOLERANCE:g}")
    _amp_ticks(ax3, names)
    ax3.legend(fontsize=7)
    fig.suptitle(f"{calib_type}: verification statistics per amplifier", fontsize=10)
    return fig


def fig_failures(calib_type: str, table: Table) -> Figure:
    """Failed exposures per amplifier and test (every ``VERIFY`` column of the results table)."""
    stage = calib_type.upper()
    prefix = f"{stage}_VERIFY_"
    tests = [c.removeprefix(prefix) for c in table.colnames if c.startswith(prefix)]
    names = list(dict.fromkeys(str(a) for a in table["amplifier"]))
    amps = np.array([str(a) for a in table["amplifier"]])
    counts = np.zeros((max(len(tests), 1), len(names)))
    for row, test in enumerate(tests):
        failed = ~np.asarray(table[prefix + test]).astype(bool)
        for j, amp in enumerate(names):
            counts[row, j] = int(failed[amps == amp].sum())
    n_exposures = len(set(int(e) for e in table["exposure"]))
    fig = Figure(figsize=(12, 0.5 + 0.45 * max(len(tests), 1)), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(counts, cmap="Reds", vmin=0, vmax=max(n_exposures, 1), aspect="auto")
    ax.set_yticks(range(len(tests)))
    ax.set_yticklabels(tests or ["(no tests)"], fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    for row in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[row, j]:
                ax.text(j, row, f"{int(counts[row, j])}", ha="center", va="center", fontsize=6)
    fig.colorbar(shown, ax=ax, label=f"failed exposures (of {n_exposures})")
    ax.set_title(f"{calib_type}: failed exposures per amplifier and test", fontsize=9)
    return fig


def fig_ptc(table: Table, detector: int) -> Figure:
    """Variance against mean per amplifier: used and rejected points, the fitted model, the turnoff."""
    n = len(table)
    cols = min(4, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(3.0 * cols, 2.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, row in zip(axes, table, strict=False):
        means = np.asarray(row["RAW_MEANS"], dtype=float)
        variances = np.asarray(row["RAW_VARS"], dtype=float)
        used = np.asarray(row["EXP_ID_MASK"], dtype=bool)
        model = np.asarray(row["FINAL_MODEL_VARS"], dtype=float)
        finite = np.isfinite(means) & np.isfinite(variances)
        ax.scatter(means[finite & used], variances[finite & used], s=12, color=_PASS, label="used", zorder=3)
        rejected = finite & ~used
        if rejected.any():
            ax.scatter(means[rejected], variances[rejected], s=16, color=_FAIL, marker="x", label="rejected")
        fitted = np.isfinite(means) & np.isfinite(model)
        if fitted.any():
            order = np.argsort(means[fitted])
            ax.plot(means[fitted][order], model[fitted][order], color="black", lw=1, label="fit")
        turnoff = float(row["PTC_TURNOFF"])
        if math.isfinite(turnoff):
            ax.axvline(turnoff, color=_LIMIT, ls="--", lw=1, label="turnoff")
        ax.set_title(
            f"{row['AMPLIFIER_NAME']}: gain {float(row['GAIN']):.3f} e⁻/ADU, "
            f"noise {float(row['NOISE']):.2f} e⁻",
            fontsize=8,
        )
        ax.set_xlabel("mean (ADU)", fontsize=7)
        ax.set_ylabel("variance (ADU²)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    if n:
        axes[0].legend(fontsize=6)
    fig.suptitle(f"photon transfer curve, detector {detector}", fontsize=10)
    return fig


def fig_thumbnail(image: CalibImage, geometry: Detector | None, defects: Table | None, title: str) -> Figure:
    """The combined image (1–99 percentile stretch) with its amplifiers and the defects boxed in red."""
    pixels = np.asarray(image.image, dtype=float)
    finite = pixels[np.isfinite(pixels)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    if not high > low:
        high = low + 1.0
    height, width = pixels.shape
    fig = Figure(figsize=(9, 7.5 * height / width + 1.0), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(pixels, origin="lower", cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8, label=str(image.header.get("BUNIT", "")))
    if geometry is not None:
        for amp in geometry.amplifiers:
            rows, cols = amp.detector_slice
            ax.add_patch(
                Rectangle(
                    (cols.start - 0.5, rows.start - 0.5),
                    cols.stop - cols.start,
                    rows.stop - rows.start,
                    fill=False,
                    edgecolor="#4fc3f7",
                    lw=0.6,
                )
            )
            ax.text(cols.start + 1, rows.start + 1, amp.name, color="#4fc3f7", fontsize=6, va="bottom")
    n_defects = 0
    if defects is not None:
        for row in defects:
            ax.add_patch(
                Rectangle(
                    (int(row["x0"]) - 0.5, int(row["y0"]) - 0.5),
                    int(row["width"]),
                    int(row["height"]),
                    fill=False,
                    edgecolor=_FAIL,
                    lw=1.0,
                )
            )
            n_defects += 1
    ax.set_title(
        f"{title}" + (f" — {n_defects} defect boxes in red" if defects is not None else ""), fontsize=9
    )
    ax.set_xlabel("x (column)", fontsize=8)
    ax.set_ylabel("y (row)", fontsize=8)
    return fig


def qa_percentiles(image: CalibImage) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """``({amp: {percentile: level}}, {amp: bad pixels})`` from the combined image's QA keywords."""
    levels: dict[str, dict[int, float]] = {}
    bad: dict[str, float] = {}
    for key, value in image.header.items():
        match = _QA_KEY.match(str(key))
        if match:
            levels.setdefault(match.group(2), {})[int(match.group(3))] = float(value)
            continue
        match = _BADPIX_KEY.match(str(key))
        if match:
            bad[match.group(2)] = float(value)
    return levels, bad


def fig_qa_percentiles(levels: Mapping[str, Mapping[int, float]], title: str) -> Figure:
    """Per amplifier: the 0–100 range (line), 5–95 (thick), 16–84 (box) and median (dot)."""
    names = list(levels)
    fig = Figure(figsize=(12, 3.2), layout="constrained")
    ax = fig.subplots()
    for i, amp in enumerate(names):
        p = levels[amp]
        if {0, 100} <= set(p):
            ax.vlines(i, p[0], p[100], color="gray", lw=1)
        if {5, 95} <= set(p):
            ax.vlines(i, p[5], p[95], color=_PASS, lw=3)
        if {16, 84} <= set(p):
            ax.add_patch(Rectangle((i - 0.25, p[16]), 0.5, p[84] - p[16], color=_PASS, alpha=0.4))
        if 50 in p:
            ax.plot([i], [p[50]], "o", color="black", ms=4)
    _amp_ticks(ax, names)
    ax.set_ylabel("level", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: QA percentiles per amplifier (0–100, 5–95, 16–84, median)", fontsize=9)
    return fig


def _parse_time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _event_label(event: Mapping[str, Any]) -> str:
    kind = event.get("type", "")
    if kind == "frames.acquired":
        return str(event.get("image_type", "")).lower()
    if kind in ("calib.generated", "calib.verified", "calib.certified"):
        return str(event.get("calib_type", ""))
    if kind == "run.status":
        return str(event.get("state", ""))
    return str(kind)


def _event_failed(event: Mapping[str, Any]) -> bool:
    return (
        event.get("outcome") == "failed"
        or event.get("verdict") == "FAILED"
        or event.get("state") in ("FAILED", "REJECTED")
        or (
            event.get("type") == "calib.certified"
            and event.get("certified") is False
            and bool(event.get("reason"))
        )
    )


def fig_timeline(events: Sequence[Mapping[str, Any]]) -> Figure:
    """One row per stage: acquisition of each image type, each build and verification (bars: their
    durations), certifications and the status events, in seconds since the run was submitted."""
    timed = [(t, e) for e in events if (t := _parse_time(e.get("time"))) is not None]
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    ax = fig.subplots()
    if not timed:
        ax.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax.transAxes)
        return fig
    start = min(t for t, _ in timed)
    rows = {stage: i for i, stage in enumerate(STAGES)}
    last_acquired = 0.0
    for moment, event in sorted(timed, key=lambda item: item[0]):
        at = (moment - start).total_seconds()
        kind = str(event.get("type", ""))
        stage = _STAGE_OF_EVENT.get(kind) or str(event.get("stage", "run"))
        row = rows.get(stage, rows["run"])
        color = _FAIL if _event_failed(event) else _PASS
        duration = event.get("duration_s")
        begin = None
        if kind == "frames.acquired":
            begin, last_acquired = last_acquired, at
        elif isinstance(duration, int | float) and duration > 0:
            begin = max(0.0, at - float(duration))
        if begin is not None and at > begin:
            ax.barh(
                row, at - begin, left=begin, height=0.5, color=color, alpha=0.6, edgecolor="black", lw=0.5
            )
            ax.text((begin + at) / 2, row, _event_label(event), ha="center", va="center", fontsize=6)
        else:
            marker = "s" if kind == "run.status" else "o"
            ax.plot([at], [row], marker, color=color, ms=5)
            if kind != "run.status" or event.get("state") in ("SUCCEEDED", "FAILED", "REJECTED"):
                ax.annotate(
                    _event_label(event),
                    (at, row),
                    xytext=(0, 7),
                    textcoords="offset points",
                    fontsize=6,
                    ha="center",
                    rotation=30,
                )
    ax.set_yticks(range(len(STAGES)))
    ax.set_yticklabels(STAGES, fontsize=8)
    ax.set_ylim(len(STAGES) - 0.4, -0.6)
    ax.set_xlabel(f"seconds since {start.isoformat(timespec='seconds')}", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("run timeline per stage (red: failed)", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------------
# The page


def png_base64(fig: Figure, dpi: int = 90) -> str:
    """The figure as a base64 PNG (Agg backend)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64(fig)}">'


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def _summary_rows(data: ReportData) -> list[list[str]]:
    rows = []
    for name, t in data.types.items():
        gen, ver, out = t.generation, t.verification, t.outcome
        failed = ver.summary.failed_tests() if ver is not None and ver.summary is not None else {}
        rows.append(
            [
                name,
                "-" if gen is None else f"{gen.outcome}" + (f" ({gen.reason})" if gen.reason else ""),
                "-" if ver is None else ver.verdict,
                ", ".join(f"{k} ×{v}" for k, v in sorted(failed.items())) or "none",
                "-" if out is None else ("yes, into " + str(out.calib_collection) if out.certified else "no"),
                "-" if out is None else out.summary,
            ]
        )
    return rows


def _failed_tests_html(t: TypeData) -> str:
    ver = t.verification
    if ver is None:
        return "<p>No verification record.</p>"
    parts = [f'<p>Verdict: <b class="verdict-{_e(ver.verdict)}">{_e(ver.verdict)}</b>']
    if ver.reason:
        parts.append(f" — {_e(ver.reason)}")
    parts.append("</p>")
    summary = ver.summary
    if summary is None:
        return "".join(parts)
    failed = summary.failed_tests()
    if failed:
        parts.append('<h4>Failed tests</h4><ul class="failed-tests">')
        parts.extend(f"<li><b>{_e(test)}</b>: {n} failures</li>" for test, n in sorted(failed.items()))
        parts.append("</ul>")
    else:
        parts.append('<p class="failed-tests">No failed tests.</p>')
    if summary.tests:
        parts.append(
            _table(
                ["test", "passed", "failed"],
                [[test, n.get("pass", 0), n.get("fail", 0)] for test, n in sorted(summary.tests.items())],
            )
        )
    if summary.failures:
        parts.append("<details><summary>Failures per exposure</summary>")
        parts.append(
            _table(
                ["exposure", "failures"],
                [[exposure, ", ".join(items)] for exposure, items in sorted(summary.failures.items())],
            )
        )
        parts.append("</details>")
    if summary.thresholds:
        parts.append(_table(["decision threshold", "value"], sorted(summary.thresholds.items())))
    return "".join(parts)


def _type_section(data: ReportData, t: TypeData) -> str:
    parts = [f'<section id="type-{_e(t.calib_type)}" class="calib-type"><h2>{_e(t.calib_type)}</h2>']
    gen = t.generation
    if gen is not None:
        parts.append(
            f"<p>Generation: {_e(gen.outcome)}"
            + (f" in {_e(gen.collection)}" if gen.collection else "")
            + (f" ({_e(gen.reason)})" if gen.reason else "")
            + (f", {gen.duration_s:.1f} s" if gen.duration_s else "")
            + f"; {len(gen.exposures)} input exposures.</p>"
        )
    parts.append("<h3>Verification</h3>")
    parts.append(_failed_tests_html(t))
    if t.results is not None and len(t.results):
        parts.append(
            _img(fig_verification(t.calib_type, t.results), f"{t.calib_type} verification statistics")
        )
        parts.append(_img(fig_failures(t.calib_type, t.results), f"{t.calib_type} failures per amplifier"))
    if t.calib_type == "ptc":
        for detector, table in sorted(t.tables.items()):
            parts.append(f"<h3>Photon transfer curve, detector {detector}</h3>")
            parts.append(_img(fig_ptc(table, detector), f"PTC detector {detector}"))
            parts.append(
                _table(
                    [
                        "amplifier",
                        "gain (e⁻/ADU)",
                        "noise (e⁻)",
                        "a00",
                        "turnoff (ADU)",
                        "turnoff (e⁻)",
                        "points used",
                    ],
                    [
                        [
                            row["AMPLIFIER_NAME"],
                            _fmt(float(row["GAIN"])),
                            _fmt(float(row["NOISE"])),
                            _fmt(
                                float(row["PTC_FIT_PARS"][0])
                                if row["PTC_FIT_TYPE"] == "EXPAPPROXIMATION"
                                else float(np.asarray(row["A_MATRIX"])[0])
                            ),
                            _fmt(float(row["PTC_TURNOFF"])),
                            _fmt(float(row["PTC_TURNOFF"]) * float(row["GAIN"])),
                            int(np.sum(row["EXP_ID_MASK"])),
                        ]
                        for row in table
                    ],
                )
            )
    if t.calib_type == "defects":
        for detector, table in sorted(t.tables.items()):
            pixels = (
                int(np.sum(np.asarray(table["width"]) * np.asarray(table["height"]))) if len(table) else 0
            )
            parts.append(
                f"<p>Detector {detector}: {len(table)} defect boxes, {pixels} pixels "
                "(drawn on the combined images below).</p>"
            )
    for combined in t.images:
        detector = int(combined.data_id["detector"])
        try:
            geometry: Detector | None = amp_geometry(data.instrument, detector, combined.image.image.shape)
        except (KeyError, ZeroDivisionError):
            geometry = None
        where = ", ".join(f"{k}={v}" for k, v in combined.data_id.items())
        defects = data.defects.get(detector)
        parts.append(f"<h3>Combined {_e(t.calib_type)} ({_e(where)})</h3>")
        parts.append(
            _img(
                fig_thumbnail(combined.image, geometry, defects, f"{t.calib_type} {where}"),
                f"{t.calib_type} thumbnail {where}"
                + ("" if defects is None else f", {len(defects)} defect boxes"),
            )
        )
        levels, bad = qa_percentiles(combined.image)
        if levels:
            parts.append(f"<h4>QA percentiles ({_e(where)})</h4>")
            parts.append(_img(fig_qa_percentiles(levels, f"{t.calib_type} {where}"), "QA percentiles"))
            percentiles = sorted({p for amp in levels.values() for p in amp})
            parts.append(
                _table(
                    ["amplifier", *[f"{p}%" for p in percentiles], "BAD pixels"],
                    [
                        [
                            amp,
                            *[_fmt(levels[amp].get(p, math.nan)) for p in percentiles],
                            _fmt(bad.get(amp, 0.0)),
                        ]
                        for amp in levels
                    ],
                    cls="qa",
                )
            )
    parts.append("</section>")
    return "".join(parts)


def _event_text(event: Mapping[str, Any]) -> str:
    kind = event.get("type", "")
    if kind == "frames.acquired":
        return f"{event.get('image_type')}: {len(event.get('exposures', []))} kept, {event.get('outcome')}"
    if kind == "calib.generated":
        return f"{event.get('calib_type')}: generated={event.get('generated')} {event.get('outcome')}"
    if kind == "calib.verified":
        return f"{event.get('calib_type')}: {event.get('verdict')} {event.get('outcome')}"
    if kind == "calib.certified":
        return f"{event.get('calib_type')}: certified={event.get('certified')} {event.get('reason') or ''}"
    if kind == "run.status":
        return f"{event.get('state')} {event.get('stage')}: {event.get('message')}"
    return str(event.get("message") or event.get("reason") or "")


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { border-bottom: 2px solid #ccc; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td { word-break: break-all; }
img { display: block; max-width: 100%; margin: 0.5em 0; }
.verdict-FAILED, .state-FAILED { color: #d62728; } .verdict-PASSED, .state-SUCCEEDED { color: #2ca02c; }
.failed-tests li { color: #d62728; }
nav a { margin-right: 1em; }
"""


def render_html(data: ReportData) -> str:
    """The whole page."""
    view = data.view
    state = view.state if view is not None else "UNKNOWN (no events)"
    nav = (
        " ".join(f'<a href="#type-{_e(name)}">{_e(name)}</a>' for name in data.types)
        + ' <a href="#timeline">timeline</a> <a href="#products">products</a>'
        + ' <a href="#config">configuration</a>'
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>cpflow run {_e(data.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>cpflow run {_e(data.run_id)} ({_e(data.instrument)})</h1>",
        f'<p>State: <b class="state-{_e(state)}">{_e(state)}</b>',
        f" — {_e(view.message)}" if view is not None and view.message else "",
        "</p>",
        f"<p>Script mode {_e(data.config.get('script_mode', '?'))}; calibration collection "
        f"{_e(data.config.get('calib_collection', '?'))}; report written "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}.</p>",
    ]
    if view is not None and view.errors:
        parts.append("<ul class='errors'>" + "".join(f"<li>{_e(e)}</li>" for e in view.errors) + "</ul>")
    for note in data.notes:
        parts.append(f"<p class='note'>Note: {_e(note)}</p>")
    parts.append(f"<nav>{nav}</nav>")
    parts.append("<h2>Summary</h2>")
    parts.append(
        _table(
            ["type", "generation", "verification", "failed tests", "certified", "outcome"],
            _summary_rows(data),
        )
    )
    for t in data.types.values():
        parts.append(_type_section(data, t))
    parts.append('<section id="timeline"><h2>Timeline</h2>')
    parts.append(_img(fig_timeline(data.events), "run timeline"))
    parts.append(
        "<details><summary>Events</summary>"
        + _table(
            ["time", "producer", "event", ""],
            [
                [
                    str(e.get("time", ""))[:23],
                    e.get("producer", ""),
                    e.get("type", e.get("_topic", "")),
                    _event_text(e),
                ]
                for e in data.events
            ],
        )
        + "</details></section>"
    )
    parts.append('<section id="products"><h2>Products in the butler</h2>')
    parts.append(
        _table(
            ["collection", "dataset type", "data id", "validity", "URI"],
            [
                [
                    p.collection,
                    p.dataset_type,
                    ", ".join(f"{k}={v}" for k, v in p.data_id.items()),
                    p.validity,
                    p.uri,
                ]
                for p in data.products
            ],
            cls="products",
        )
    )
    parts.append("</section>")
    parts.append('<section id="config"><h2>Run configuration (as accepted)</h2>')
    parts.append(
        _table(
            ["key", "value"],
            [
                [key, json.dumps(value, default=str) if isinstance(value, dict | list) else value]
                for key, value in data.config.items()
            ],
        )
    )
    parts.append("</section></body></html>")
    return "".join(parts)


def write_report(
    butler: Butler,
    run_id: str,
    out_dir: Path,
    events: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write ``<out_dir>/<run_id>.html`` and return its path (`LookupError` for an unknown run)."""
    data = collect(butler, run_id, events)
    data.notes.extend(notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{run_id}.html"
    path.write_text(render_html(data), encoding="utf-8")
    return path
