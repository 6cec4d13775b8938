"""Print the truth-recovery figures that ``tests/unit/test_truth_recovery.py`` asserts limits on.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/truth_figures.py``. It builds
the same simulated products (same seed and shapes) with `bench.scenes`, as the tests do, and prints the
worst errors per product, so a closing note or a review can quote numbers rather than "passed".
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.scenes import build_truth_products
from services.generator.defects import find_defects
from services.generator.ptc import solve_ptc


def main() -> None:
    products = build_truth_products(Path(tempfile.mkdtemp(prefix="truth_recovery")))
    truth = products.truth["amplifiers"]
    fits = {
        "EXPAPPROXIMATION": products.ptc,
        "FULLCOVARIANCE": solve_ptc(products.pairs, fit_type="FULLCOVARIANCE"),
    }
    for label, result in fits.items():
        gain = max(abs(a.gain / truth[n]["gain"] - 1) for n, a in result.items())
        noise = max(abs(a.noise / truth[n]["read_noise_e"] - 1) for n, a in result.items())
        a00 = max(abs(a.a00 / truth[n]["a00"] - 1) for n, a in result.items())
        turnoff = [a.turnoff / truth[n]["turnoff_adu"] - 1 for n, a in result.items()]
        print(
            f"PTC {label}: worst |gain error| {gain:.4f}, worst |read-noise error| {noise:.4f}, "
            f"worst |a00 error| {a00:.3f}, turnoff error {min(turnoff):.3f} .. {max(turnoff):.3f}"
        )
    masks = products.camera.defect_mask(0)
    found = find_defects(dark=products.dark, flat=products.flat, amp_boxes=products.amp_boxes).mask
    for kind in ("hot_pixel", "cold_pixel", "hot_column", "dead_column"):
        injected = masks[kind]
        fraction = (found & injected).sum() / injected.sum()
        print(f"defects {kind}: injected {int(injected.sum())}, found {fraction:.4f}")
    print(
        f"defects false positives: {int((found & ~masks['any']).sum())} of {int(masks['any'].sum())} injected"
    )
    good = ~masks["any"]
    ratio = products.flat.image[good] / products.camera.flat_response(0)[good]
    print(f"combined flat / injected response: rms {float(np.std(ratio / np.median(ratio))):.5f}")


if __name__ == "__main__":
    main()
