"""The camera-driver interface the acquirer service commands.

The acquirer asks a `CameraDriver` for one exposure at a time (`CameraDriver.take_image`) and
gets back one `CapturedFrame` per detector: the raw FITS file written for that detector. The
summit SAL driver and the `~services.acquirer.simulated_camera.SimulatedCamera` implement it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.calibtypes import IMAGE_TYPES
from shared.instruments import Instrument

__all__ = ["IMAGE_TYPES", "CameraDriver", "CameraError", "CapturedFrame", "ExposureRequest"]


class CameraError(RuntimeError):
    """The camera refused or failed a command (bad filter, bad request, hardware fault)."""


@dataclass(frozen=True)
class ExposureRequest:
    """One exposure to take.

    Attributes
    ----------
    image_type : `str`
        ``"BIAS"``, ``"DARK"`` or ``"FLAT"``.
    exposure_time : `float`
        Requested exposure time in seconds (0 for a bias).
    group_id : `str`
        Group the exposure belongs to (GROUPID header).
    program, reason, note : `str` or `None`
        Free-form scheduling information copied into the header.
    """

    image_type: str
    exposure_time: float
    group_id: str
    program: str | None = None
    reason: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class CapturedFrame:
    """One detector of one exposure, as written to disk by the camera."""

    exposure_id: int
    obs_id: str
    detector: int
    path: Path
    """The raw FITS file of that detector."""


class CameraDriver(abc.ABC):
    """Interface of a camera the acquirer can command."""

    instrument: Instrument

    @abc.abstractmethod
    async def setup_instrument(self, physical_filter: str) -> None:
        """Put ``physical_filter`` in the beam.

        Raises
        ------
        CameraError
            If the filter is not one of the instrument's filters.
        """

    @abc.abstractmethod
    async def take_image(self, request: ExposureRequest, detectors: Sequence[int]) -> list[CapturedFrame]:
        """Take one exposure and return one frame per requested detector, in request order.

        Raises
        ------
        CameraError
            If the request is invalid or the exposure failed.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release the camera; the default does nothing."""
