"""Transient failures: one classifier, one retry policy.

Several cpflow services write the same registry at once. daf_butler's SQLite engine already waits
on locks (``busy_timeout``, ``BEGIN IMMEDIATE``), so most contention never surfaces; what still
escapes as an error (``database is locked``, PostgreSQL serialization failures and deadlocks,
dropped or refused connections, timeouts) is transient: the same call may succeed a moment later.
Everything else is not, and is reported at once.

The policy is applied at one layer only: where a unit of work is run (a service's
`~shared.service.ServiceContext.run_blocking`, the CLI's repository set-up). The butler-layer
functions below it are idempotent and do not retry on their own, so a retried unit of work simply
runs again from its start.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy.exc
import tenacity

__all__ = ["call_with_retries", "is_transient", "retrying"]

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
    "the database system is starting up",  # PostgreSQL restarting
    "the database system is shutting down",
    "the database system is in recovery mode",
)
_TRANSIENT_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying.

    Parameters
    ----------
    exc : `BaseException`
        What a unit of work raised.

    Returns
    -------
    transient : `bool`
        `True` for database lock, busy, serialization, deadlock and lost-connection errors, and for
        timeouts and refused or reset connections.
    """
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlite3.OperationalError):
        text = str(exc).lower()
        return any(message in text for message in _TRANSIENT_MESSAGES)
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        # psycopg 3 (SQLAlchemy 2.1's postgresql:// driver) names it sqlstate; psycopg2 pgcode.
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in _TRANSIENT_SQLSTATES
    return False


def retrying(
    attempts: int,
    *,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> tenacity.Retrying:
    """The retry policy: up to ``attempts`` calls, exponential backoff with jitter, transient errors only.

    The last error is re-raised when the attempts are spent; a non-transient error at once.

    Parameters
    ----------
    attempts : `int`
        Total number of calls (at least 1).
    first_delay, max_delay : `float`, optional
        Seconds before the second call, and the longest single wait.
    on_retry : callable, optional
        Called with the error and the attempt number before each retry (metrics, logs).
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is None:
            return
        _LOG.warning(
            "transient failure, retrying",
            extra={"attempt": state.attempt_number, "attempts": attempts, "error": str(error)[:500]},
        )
        if on_retry is not None:
            on_retry(error, state.attempt_number)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=tenacity.wait_exponential_jitter(multiplier=first_delay, max=max_delay, jitter=first_delay),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retries[R](attempts: int, func: Callable[..., R], *args: object, **kwargs: object) -> R:
    """``func(*args, **kwargs)`` under `retrying` (for callers outside a service, such as the CLI)."""
    return retrying(attempts)(func, *args, **kwargs)
