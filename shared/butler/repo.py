"""Create and open cpflow's butler repository."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from lsst.daf.butler import Butler, Config

from shared.instruments import get_instrument, instrument_names

from .datasets import register_dataset_types
from .instruments import register_instrument

__all__ = ["SEED_CONFIG", "create_repository", "open_butler", "registry_problem", "seed_config"]

_LOG = logging.getLogger(__name__)

SEED_CONFIG = Path(__file__).parent / "config" / "seed.yaml"
"""Seed configuration for `lsst.daf.butler.Butler.makeRepo` (storage classes and formatters)."""


def seed_config(registry_db: str | None = None, seed: str | Path | None = None) -> Config:
    """Load the seed configuration, optionally with a registry database URL.

    Parameters
    ----------
    registry_db : `str`, optional
        SQLAlchemy URL of the registry (e.g. ``postgresql://user@host/db``); the default is a
        SQLite file ``gen3.sqlite3`` in the repository root.
    seed : `str` or `pathlib.Path`, optional
        Another seed configuration (``CPFLOW_BUTLER_SEED``; in Kubernetes the ConfigMap
        ``cpflow-butler-config``); the default is `SEED_CONFIG`.

    Returns
    -------
    config : `lsst.daf.butler.Config`
        The configuration to pass to ``Butler.makeRepo``.
    """
    config = Config(str(seed or SEED_CONFIG))
    if registry_db:
        config["registry", "db"] = registry_db
    return config


def create_repository(
    root: str | Path, *, registry_db: str | None = None, seed: str | Path | None = None
) -> Path:
    """Create the butler repository if needed and sync instruments and dataset types.

    Safe to call again on an existing repository (and by several processes at once): it then only
    re-syncs the instruments of `shared.instruments.instrument_names` and the dataset types.

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        Repository root directory.
    registry_db : `str`, optional
        Registry database URL; `None` selects SQLite at ``root/gen3.sqlite3``. A ``postgresql://``
        URL selects PostgreSQL (the database needs the ``btree_gist`` extension).

    Returns
    -------
    root : `pathlib.Path`
        The directory holding ``butler.yaml``.
    """
    root = Path(root).absolute()
    config_file = root / "butler.yaml"
    if not config_file.exists():
        try:
            Butler.makeRepo(str(root), config=seed_config(registry_db, seed))
            _LOG.info("created butler repository at %s", root)
        except FileExistsError:
            _LOG.info("butler repository at %s is being created by another process", root)
        except Exception as exc:
            # makeRepo writes butler.yaml before it creates the registry: a registry it could not
            # reach (its server not up yet, a wrong password, no btree_gist) would leave a
            # repository every later start takes as made, so that file goes. Any other failure
            # (say, another pod creating the same registry at the same moment) leaves it.
            if registry_problem(exc) is not None:
                config_file.unlink(missing_ok=True)
            raise
    # Another process (another pod's init container) may have written butler.yaml and still be
    # creating the registry: wait for it, unless the registry cannot be reached at all.
    butler = _open_when_ready(root)
    try:
        for name in instrument_names():
            register_instrument(butler, get_instrument(name))
        register_dataset_types(butler)
    finally:
        butler.close()
    return root


def _open_when_ready(root: Path, timeout: float = 60.0) -> Butler:
    """Open a repository whose registry another process may still be creating.

    A registry that cannot be reached (`registry_problem`) fails at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_butler(root, writeable=True)
        except Exception as exc:
            if time.monotonic() > deadline or registry_problem(exc) is not None:
                raise
            _LOG.debug("repository %s not ready yet: %s", root, exc)
            time.sleep(0.5)


def open_butler(
    root: str | Path,
    *,
    writeable: bool = True,
    run: str | None = None,
    collections: str | Iterable[str] | None = None,
) -> Butler:
    """Open the repository at ``root``.

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        Repository root (or path of its ``butler.yaml``).
    writeable : `bool`, optional
        Open for writing.
    run : `str`, optional
        Default RUN collection for ``put``; also the default search collection if ``collections``
        is not given.
    collections : `str` or iterable of `str`, optional
        Default search collections.

    Returns
    -------
    butler : `lsst.daf.butler.Butler`
        The butler; close it (or use it as a context manager) when done.
    """
    return Butler.from_config(str(root), writeable=writeable, run=run, collections=collections)


def registry_problem(exc: BaseException) -> str | None:
    """One line saying why the registry database could not be used, if ``exc`` is such a problem.

    A database that refuses the connection (no server, a wrong password, no such database) or one
    without the ``btree_gist`` extension daf_butler's PostgreSQL registry needs; `None` for
    anything else (a bug keeps its traceback).
    """
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.OperationalError):
        if "no such table" in str(exc):  # SQLite: another process is still creating the registry
            return None
        lines = [line.strip() for line in str(exc.orig or exc).splitlines() if line.strip()]
        return " ".join(lines) or type(exc).__name__
    if isinstance(exc, RuntimeError) and "btree_gist" in str(exc):
        return "the database has no btree_gist extension (CREATE EXTENSION btree_gist; as its owner)"
    return None


def main() -> int:
    """``python -m shared.butler.repo``: create (or re-sync) the repository of this environment's settings.

    What a Kubernetes init container runs before a service starts (safe in several pods at once).
    Exit status 6 with one line when the registry database cannot be used.
    """
    from shared.settings import load_settings

    settings = load_settings()
    try:
        root = create_repository(
            settings.butler_repo, registry_db=settings.registry_db, seed=settings.butler_seed
        )
    except Exception as exc:
        problem = registry_problem(exc)
        if problem is None:
            raise
        print(
            f"cannot use the registry of the butler repository {settings.butler_repo}: {problem}",
            file=sys.stderr,
        )
        return 6
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
