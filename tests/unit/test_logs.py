"""Logs: JSON lines with the run id; a repeated warning (a broker outage) is rate-limited."""

from __future__ import annotations

import io
import json
import logging

from shared.logs import JsonFormatter, RepeatLimiter


def _logger(clock: list[float]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatLimiter(interval=10.0, clock=lambda: clock[0]))
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_a_connection_error_storm_is_one_line_per_interval() -> None:
    clock = [0.0]
    logger, stream = _logger(clock)
    for i in range(1000):  # 100 a second for 10 s
        clock[0] = i * 0.01
        logger.error("Unable to connect to %s", "127.0.0.1:9092")
    clock[0] = 10.5
    logger.error("Unable to connect to %s", "127.0.0.1:9092")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[1]["suppressed"] == 999
    assert lines[0]["message"] == "Unable to connect to 127.0.0.1:9092"


def test_information_and_different_messages_are_not_limited() -> None:
    clock = [0.0]
    logger, stream = _logger(clock)
    for i in range(5):
        logger.info("frames acquired", extra={"run_id": f"r{i}"})
        logger.warning("not ready %d", i)  # the same template: limited
        logger.warning(f"distinct {i}")  # distinct messages: each passes
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["run_id"] for line in lines if line["level"] == "INFO"] == [f"r{i}" for i in range(5)]
    assert sum(line["message"].startswith("not ready") for line in lines) == 1
    assert sum(line["message"].startswith("distinct") for line in lines) == 5
