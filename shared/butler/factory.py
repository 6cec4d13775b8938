"""One butler per service process, cloned for each piece of work.

daf_butler's `~lsst.daf.butler.LabeledButlerFactory` opens a repository once (configuration,
dimension universe, dataset-type cache, a database connection pool) and hands out cheap clones
(`~lsst.daf.butler.Butler.clone`) that share the pool. A clone must not be used by two threads
at once, so each unit of work (a handler's blocking call, a readiness probe) takes its own and
closes it when done; the factory is closed once, when the service stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lsst.daf.butler import Butler, LabeledButlerFactory

__all__ = ["ButlerFactory"]

_LABEL = "cpflow"


class ButlerFactory:
    """Clones of one repository's butler.

    Parameters
    ----------
    repo : `str`
        The repository (its root or ``butler.yaml``).
    writeable : `bool`, optional
        Whether the clones may write.
    """

    def __init__(self, repo: str, *, writeable: bool = True) -> None:
        self.repo = str(repo)
        self._factory = LabeledButlerFactory({_LABEL: self.repo}, writeable=writeable)

    @contextmanager
    def butler(self) -> Iterator[Butler]:
        """A clone of the repository's butler for one unit of work, closed afterwards."""
        butler = self._factory.create_butler(_LABEL)
        try:
            yield butler
        finally:
            butler.close()

    def close(self) -> None:
        """Release the repository's connections (the service is stopping)."""
        self._factory.close()
