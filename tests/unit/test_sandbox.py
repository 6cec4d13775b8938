"""A sandbox's settings: its own prefix, state and Kafka users; production's butler."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpflow.access import principals
from cpflow.sandbox import sandbox_settings
from shared.settings import Settings


@pytest.mark.parametrize("prefix", ["../x", "a.b", "a b", "", "x" * 41, "cpflow"])
def test_bad_or_production_prefixes_are_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ValueError, match=r"prefix|identifier"):
        sandbox_settings(Settings(home=tmp_path), prefix)


def test_a_sandbox_has_its_own_state_and_users_and_production_s_butler(tmp_path: Path) -> None:
    production = Settings(home=tmp_path, butler_repo=str(tmp_path / "butler"))
    sandbox = sandbox_settings(production, "debug1")
    assert sandbox.home == tmp_path / "sandboxes" / "debug1"
    assert sandbox.butler_repo == production.butler_repo
    assert sandbox.topic_prefix == "debug1" and sandbox.group_id("generator") == "debug1-generator"
    ours = {p.username for p in principals(production)}
    theirs = principals(sandbox)
    assert not ours & {p.username for p in theirs}
    assert all(topic.startswith("debug1.") for p in theirs for topic in (*p.reads, *p.writes))
