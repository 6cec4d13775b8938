"""Retry registry operations that fail for transient database reasons.

Several cpflow services write the same registry at once. daf_butler's SQLite engine already sets
``PRAGMA busy_timeout`` (five minutes) on every connection and opens writeable transactions with
``BEGIN IMMEDIATE``, so most lock contention simply waits; `retry_transient` covers what still
escapes as an error (``database is locked`` when a busy handler cannot be used, PostgreSQL
serialization failures and deadlocks, dropped connections).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy.exc

__all__ = ["is_transient_db_error", "retry_transient"]

_LOG = logging.getLogger(__name__)

R = TypeVar("R")

_TRANSIENT_MESSAGES = (
    "database is locked",
    "database is busy",
    "database table is locked",
    "database schema is locked",
    "could not serialize access",
    "deadlock detected",
    "server closed the connection unexpectedly",
    "terminating connection due to",
    "connection reset by peer",
    "could not connect to server",
    "connection refused",
)


def is_transient_db_error(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a database error that is worth retrying.

    Parameters
    ----------
    exc : `BaseException`
        The exception raised by a registry operation.

    Returns
    -------
    transient : `bool`
        `True` for lock / busy / serialization / deadlock / dropped-connection errors.
    """
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlite3.OperationalError):
        text = str(exc).lower()
        return any(message in text for message in _TRANSIENT_MESSAGES)
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        # psycopg2 serialization failure / deadlock (SQLSTATE 40001 / 40P01).
        code = getattr(exc.orig, "pgcode", None)
        return code in {"40001", "40P01"}
    return False


def retry_transient(
    func: Callable[..., R],
    *args: Any,
    attempts: int = 8,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
    **kwargs: Any,
) -> R:
    """Call ``func(*args, **kwargs)``, retrying on transient database errors.

    Parameters
    ----------
    func : `~collections.abc.Callable`
        The operation; it must be safe to repeat (daf_butler rolls back a failed transaction).
    *args
        Positional arguments for ``func``.
    attempts : `int`, optional
        Total number of calls before giving up (at least 1).
    first_delay : `float`, optional
        Sleep before the second attempt, in seconds; doubled after each failure.
    max_delay : `float`, optional
        Upper bound of a single sleep, in seconds.
    **kwargs
        Keyword arguments for ``func``.

    Returns
    -------
    result
        What ``func`` returned.

    Raises
    ------
    Exception
        The last transient error after ``attempts`` calls, or any non-transient error at once.
    """
    attempts = max(1, attempts)
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if attempt >= attempts or not is_transient_db_error(exc):
                raise
            sleep = min(delay, max_delay) * (1.0 + 0.25 * random.random())
            _LOG.warning(
                "transient database error in %s (attempt %d/%d), retrying in %.2f s: %s",
                getattr(func, "__qualname__", func),
                attempt,
                attempts,
                sleep,
                exc,
            )
            time.sleep(sleep)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
