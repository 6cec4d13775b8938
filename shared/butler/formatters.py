"""Butler formatters that store cpflow's in-memory types as plain FITS files.

Every file written here can be opened with `astropy.io.fits` (or ds9) without any cpflow code:

* `RawFitsFormatter`: `shared.images.RawDetectorImage` in the cameras' own raw format
  (`shared.rawformat`: segments ``SegmentNN`` in cameraGeom order, RICE-compressed int32).
* `CalibImageFitsFormatter`: `shared.images.CalibImage`, a primary header plus ``IMAGE``, ``MASK``
  and ``VARIANCE`` image HDUs.
* `TableFitsFormatter`: `astropy.table.Table` as a FITS binary table, the table's ``meta`` in the
  table header.

The formatters implement only `~lsst.daf.butler.FormatterV2.write_local_file`: the butler writes to
a temporary file and moves it into place, so a reader never sees a partial file.
"""

from __future__ import annotations

import warnings
from typing import Any

import astropy.table
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from lsst.daf.butler import FormatterV2
from lsst.resources import ResourcePath

from shared.images import CalibImage, RawDetectorImage
from shared.rawformat import image_geometry, read_raw, write_raw

__all__ = ["CalibImageFitsFormatter", "RawFitsFormatter", "TableFitsFormatter"]


class _FitsFormatter(FormatterV2):
    """Common base: ``.fits`` files read from a local path."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fit", ".fits.gz", ".fits.fz"})
    can_read_from_local_file = True

    def _check_type(self, in_memory_dataset: Any, expected: type) -> None:
        if not isinstance(in_memory_dataset, expected):
            raise TypeError(
                f"{type(self).__name__} writes {expected.__module__}.{expected.__qualname__}, "
                f"not {type(in_memory_dataset).__module__}.{type(in_memory_dataset).__qualname__}"
            )


class RawFitsFormatter(_FitsFormatter):
    """Read and write `shared.images.RawDetectorImage` in the cameras' raw format (`shared.rawformat`).

    Real raws (compressed or not) and the simulated camera's files are read by the same code.
    """

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        """Read a raw detector image.

        Parameters
        ----------
        path : `str`
            Local path of the FITS file.
        component : `str`, optional
            Unsupported; must be `None`.
        expected_size : `int`, optional
            Expected file size (unused).

        Returns
        -------
        raw : `shared.images.RawDetectorImage`
            The raw image, with data loaded into memory.
        """
        return read_raw(path)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        """Write a raw detector image.

        Parameters
        ----------
        in_memory_dataset : `shared.images.RawDetectorImage`
            The image to write.
        uri : `lsst.resources.ResourcePath`
            Local (temporary) file to write.
        """
        self._check_type(in_memory_dataset, RawDetectorImage)
        write_raw(in_memory_dataset, image_geometry(in_memory_dataset), uri.ospath)


class CalibImageFitsFormatter(_FitsFormatter):
    """Read and write `shared.images.CalibImage` (primary header + IMAGE, MASK, VARIANCE HDUs)."""

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        """Read a calibration image.

        Parameters
        ----------
        path : `str`
            Local path of the FITS file.
        component : `str`, optional
            Unsupported; must be `None`.
        expected_size : `int`, optional
            Expected file size (unused).

        Returns
        -------
        image : `shared.images.CalibImage`
            The image, mask and variance planes and the primary header.
        """
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            return CalibImage.from_hdulist(hdul)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        """Write a calibration image.

        Parameters
        ----------
        in_memory_dataset : `shared.images.CalibImage`
            The image to write.
        uri : `lsst.resources.ResourcePath`
            Local (temporary) file to write.
        """
        self._check_type(in_memory_dataset, CalibImage)
        with warnings.catch_warnings():
            # Mask-plane cards such as MP_NO_DATA are longer than 8 characters and become
            # HIERARCH cards, which is intended; do not warn on every write.
            warnings.filterwarnings("ignore", message="Keyword name .* HIERARCH card", category=VerifyWarning)
            hdul = in_memory_dataset.to_hdulist()
            hdul.writeto(uri.ospath, overwrite=True)


class TableFitsFormatter(_FitsFormatter):
    """Read and write `astropy.table.Table` as a FITS binary table.

    The table is written to the first extension (``EXTNAME`` ``TABLE`` unless the table's ``meta``
    names another); ``meta`` entries become header cards and come back on read.
    """

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        """Read a table.

        Parameters
        ----------
        path : `str`
            Local path of the FITS file.
        component : `str`, optional
            Unsupported; must be `None`.
        expected_size : `int`, optional
            Expected file size (unused).

        Returns
        -------
        table : `astropy.table.Table`
            The table (of the storage class's Python type), with ``meta`` from the header.
        """
        pytype: type[astropy.table.Table] = astropy.table.Table
        declared = self.file_descriptor.storageClass.pytype
        if isinstance(declared, type) and issubclass(declared, astropy.table.Table):
            pytype = declared
        table = pytype.read(path, format="fits", hdu=1, memmap=False)
        # Drop the FITS bookkeeping astropy copies into meta; keep everything the writer put there.
        if table.meta.get("EXTNAME") == "TABLE":
            del table.meta["EXTNAME"]
        return table

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        """Write a table.

        Parameters
        ----------
        in_memory_dataset : `astropy.table.Table`
            The table to write; scalar ``meta`` values become header cards.
        uri : `lsst.resources.ResourcePath`
            Local (temporary) file to write.
        """
        self._check_type(in_memory_dataset, astropy.table.Table)
        with warnings.catch_warnings():
            # ip_isr's metadata keys (CALIB_CREATION_DATE, PTC_VERSION, ...) are HIERARCH cards.
            warnings.filterwarnings("ignore", message="Keyword name .* HIERARCH card", category=VerifyWarning)
            table_hdu = fits.table_to_hdu(in_memory_dataset)
        if "EXTNAME" not in table_hdu.header:
            table_hdu.header["EXTNAME"] = "TABLE"
        fits.HDUList([fits.PrimaryHDU(), table_hdu]).writeto(uri.ospath, overwrite=True)
