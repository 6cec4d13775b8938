"""`cpflow status` shows both NOISE rules' decisions of a verification (issue 13)."""

from __future__ import annotations

from cpflow.runview import RunView


def test_status_names_the_deciding_and_the_reported_noise_rule() -> None:
    view = RunView(run_id="r1")
    view.apply(
        {
            "type": "calib.verified",
            "time": "2026-12-02T16:00:00",
            "calib_type": "dark",
            "verdict": "PASSED",
            "summary": {
                "counts": {"7": {"NOISE": 1}},
                "tests": {"NOISE": {"pass": 95, "fail": 1}},
                "noise_rule": "cpflow",
                "noise_rules": {
                    "cpflow": {"certify": True, "noise_failures": 1, "failed_exposures": []},
                    "cp_verify": {"certify": False, "noise_failures": 67, "failed_exposures": [7, 8]},
                },
            },
        }
    )
    assert view.to_dict()["types"]["dark"]["verification"]["noise_rules"]["cp_verify"]["noise_failures"] == 67
    text = view.render()
    assert "NOISE rule cpflow (decides): certify, 1 NOISE failures" in text
    assert "NOISE rule cp_verify (reported): reject, 67 NOISE failures" in text
