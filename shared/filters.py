"""The physical filters of LATISS, LSSTComCam and LSSTCam: the ``physical_filter`` records obs_lsst
registers (``name``, ``band``), as cpflow's own data (rubin_formats.md §4.4; names and bands read from
lsst/obs_lsst @ ``0e84d755`` ``python/lsst/obs/lsst/filters.py``).

The short lists are written out. The long ones are made from the glass in each wheel and the rules
that combine them (a name ``a~b`` is two optical elements in the beam at once):

* **LATISS** (707 records): every filter-wheel entry on its own, and every ``filter~grating`` with
  the grating-wheel gratings (the band is the filter's), except ``diffuser``, which is never
  combined; the SDSS 65 mm filters also sit in the grating wheel, and there combine only with
  ``empty`` (``empty~SDSSr_65mm``, the band is the grating-wheel filter's).
* **LSSTComCam** (15 records): written out.
* **LSSTCam** (276 records): the no-filter and on-sky filters, ``unknown``, the test stand's (BOT)
  colour and projector filters on their own and with each neutral-density filter (band
  ``<band>~nd``; a neutral-density filter alone has band ``white~nd``), and the CCOB lamps with the
  no-filter and on-sky filters (a lamp alone when there is no filter; ``<filter>~<lamp>`` when either
  is white or both have one band; the band is the coloured one's, else ``white``).

The records are in obs_lsst's order (LSSTCam's BOT entries grouped by band, as obs_lsst lists them),
so the on-sky filters come first. A ``physical_filter`` name is at most 32 characters (the butler's
``physical_filter.name``; LATISS ``KPNO_373A_677nm~pinhole_2_1_1000`` is that long).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

__all__ = [
    "COMBINE",
    "FilterRecord",
    "comcam_filters",
    "latiss_filters",
    "listed",
    "lsstcam_filters",
    "missing_filter_reason",
    "wheel_names",
]

type FilterRecord = tuple[str, str]
"""``(physical_filter, band)``."""

COMBINE = "~"
"""Joins the optical elements of one ``physical_filter`` name (obs_lsst's ``FILTER_DELIMITER``)."""

# --- LATISS -----------------------------------------------------------------------------------------

_LATISS_FILTER_WHEEL: tuple[FilterRecord, ...] = (
    ("empty", "white"),
    ("blank_bk7_wg05", "white"),
    ("KPNO_1111_436nm", "g"),
    ("KPNO_373A_677nm", "r"),
    ("KPNO_406_828nm", "z"),
    ("diffuser", "diffuser"),
    ("unknown", "unknown"),
    ("BG40", "g"),
    ("BG40_65mm_1", "g"),
    ("BG40_65mm_2", "g"),
    ("quadnotch1", "notch"),
    ("RG610", "r"),
    ("OG550_65mm_1", "g"),
    ("OG550_65mm_2", "g"),
    ("FELH0600", "r"),
    ("SDSSg", "g"),
    ("SDSSr", "r"),
    ("SDSSi", "i"),
    ("collimator", "white"),
    ("cyl_lens", "white"),
)
_LATISS_65MM: tuple[FilterRecord, ...] = (
    ("SDSSu_65mm", "u"),
    ("SDSSg_65mm", "g"),
    ("SDSSr_65mm", "r"),
    ("SDSSi_65mm", "i"),
    ("SDSSz_65mm", "z"),
    ("SDSSy_65mm", "y"),
)
"""Filters that fit either wheel."""
_LATISS_GRATINGS: tuple[str, ...] = (
    "ronchi90lpmm",
    "ronchi170lpmm",
    "empty",
    "unknown",
    "holo4_003",
    "blue300lpmm_qn1",
    "holo4_001",
    *(f"pinhole_1_{d}" for d in ("1000", "0500", "0200", "0100")),
    *(f"pinhole_2_{i}_{d}" for i in (1, 2, 3, 4) for d in ("1000", "0500", "0200", "0100")),
)
_LATISS_NEVER_COMBINED = frozenset({"diffuser"})
_LATISS_65MM_IN_GRATING_WHEEL_WITH = "empty"


@cache
def latiss_filters() -> tuple[FilterRecord, ...]:
    """LATISS's 707 ``(physical_filter, band)`` records."""
    wheel = _LATISS_FILTER_WHEEL + _LATISS_65MM
    records = list(wheel)
    for name, band in wheel:
        if name in _LATISS_NEVER_COMBINED:
            continue
        records.extend((f"{name}{COMBINE}{grating}", band) for grating in _LATISS_GRATINGS)
        if name == _LATISS_65MM_IN_GRATING_WHEEL_WITH:
            records.extend((f"{name}{COMBINE}{grating}", band_) for grating, band_ in _LATISS_65MM)
    return tuple(records)


# --- LSSTComCam -------------------------------------------------------------------------------------


@cache
def comcam_filters() -> tuple[FilterRecord, ...]:
    """LSSTComCam's 15 ``(physical_filter, band)`` records (``<band>_NN``: the glass's serial number)."""
    return (
        ("empty", "white"),
        ("none", "white"),
        ("unknown", "unknown"),
        ("pinhole", "white"),
        ("OG590_2_5mm", "OG590"),
        ("u_05", "u"),
        ("u_02", "u"),
        ("u_06", "u"),
        ("g_07", "g"),
        ("g_01", "g"),
        ("r_03", "r"),
        ("i_06", "i"),
        ("z_03", "z"),
        ("z_02", "z"),
        ("y_04", "y"),
    )


# --- LSSTCam ----------------------------------------------------------------------------------------

_NO_FILTER: tuple[FilterRecord, ...] = (
    ("empty", "white"),  # nothing in the beam
    ("none", "white"),  # every filter in the carousel; the auto-changer partly in the beam
)
_LSSTCAM_ON_SKY: tuple[FilterRecord, ...] = (
    ("ph_5", "white"),  # pinhole
    ("ef_43", "white"),  # "empty" filter
    ("u_24", "u"),
    ("g_6", "g"),
    ("r_57", "r"),
    ("i_39", "i"),
    ("z_20", "z"),
    ("y_10", "y"),
)
_BOT_COLOUR_AND_PROJECTOR: tuple[FilterRecord, ...] = (
    ("SDSSu", "u"),
    ("SDSSg", "g"),
    ("SDSSr", "r"),
    ("SDSSi", "i"),
    ("SDSSz", "z"),
    ("SDSSY", "y"),
    ("480nm", "g"),
    ("650nm", "r"),
    ("750nm", "i"),
    ("870nm", "z"),
    ("950nm", "y"),
    ("970nm", "y"),
    ("grid", "grid"),
    ("spot", "spot"),
    ("sparsegrid", "sparsegrid"),
    ("streak", "streak"),
    ("ellipses", "ellipses"),
)
_BOT_NEUTRAL_DENSITY: tuple[str, ...] = (
    *(f"ND_OD{od}" for od in ("0.1", "0.3", "0.5", "0.7", "1.0", "2.0")),
    *(f"ND_OD{od}" for od in ("0.01", "0.05", "0.4", "3.0", "4.0")),  # also seen in BOT data
)
_CCOB_LAMPS: tuple[FilterRecord, ...] = (
    ("HIGH", "white"),
    ("LOW", "white"),
    ("uv", "u"),
    ("blue", "g"),
    ("red", "r"),
    ("nm750", "i"),
    ("nm850", "z"),
    ("nm960", "y"),
)
_WHITE = "white"


def _grouped_by_band(records: Iterable[FilterRecord]) -> list[FilterRecord]:
    """``records`` grouped by band, bands in order of first appearance, each group in its order."""
    order: dict[str, int] = {}
    made = list(records)
    for _, band in made:
        order.setdefault(band, len(order))
    return sorted(made, key=lambda record: order[record[1]])


def _bot_filters() -> list[FilterRecord]:
    # No colour filter: the neutral-density filter alone (band white~nd).
    made = [(nd, f"{_WHITE}{COMBINE}nd") for nd in _BOT_NEUTRAL_DENSITY]
    for name, band in _BOT_COLOUR_AND_PROJECTOR:
        made.append((name, band))
        made.extend((f"{name}{COMBINE}{nd}", f"{band}{COMBINE}nd") for nd in _BOT_NEUTRAL_DENSITY)
    return [("unknown", "unknown"), *_grouped_by_band(made)]


def _ccob_filters() -> list[FilterRecord]:
    made = []
    for name, band in _NO_FILTER + _LSSTCAM_ON_SKY:
        for lamp, lamp_band in _CCOB_LAMPS:
            if _WHITE not in (band, lamp_band) and band != lamp_band:
                continue
            combined = lamp if name == "empty" else f"{name}{COMBINE}{lamp}"
            made.append((combined, lamp_band if band == _WHITE else band))
    return made


@cache
def lsstcam_filters() -> tuple[FilterRecord, ...]:
    """LSSTCam's 276 ``(physical_filter, band)`` records."""
    return (*_NO_FILTER, *_LSSTCAM_ON_SKY, *_bot_filters(), *_ccob_filters())


# --- messages ---------------------------------------------------------------------------------------


def listed(names: Sequence[str], limit: int = 40) -> str:
    """``names`` joined with commas, the first ``limit`` of them and how many more."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} (and {len(names) - limit} more)"


def wheel_names(records: Sequence[FilterRecord]) -> tuple[list[str], list[str]]:
    """The filters and the gratings of an instrument that names ``filter~grating`` (LATISS).

    The filters are the names without ``~`` (each is also a record of its own), the gratings the
    second parts of the combined names; both in the order of ``records``.
    """
    names = [n for n, _ in records]
    filters = list(dict.fromkeys(n for n in names if COMBINE not in n))
    gratings = list(dict.fromkeys(n.partition(COMBINE)[2] for n in names if COMBINE in n))
    return filters, gratings


def missing_filter_reason(
    instrument: str, records: Sequence[FilterRecord], name: str, *, combined: bool = False
) -> str:
    """Why ``name`` is not one of ``records`` (the instrument's physical filters), for a message.

    Parameters
    ----------
    instrument : `str`
        The instrument's name.
    records : `~collections.abc.Sequence` [`FilterRecord`]
        The instrument's records.
    name : `str`
        The physical_filter that is not among them.
    combined : `bool`, optional
        The instrument always names ``filter~grating`` (LATISS): the reason names the part that is
        wrong, or the filter's gratings.
    """
    names = [n for n, _ in records]
    if not combined or COMBINE not in name:
        return f"{instrument} has {len(names)} physical filters (obs_lsst's): {listed(names, 20)}"
    filt, _, grating = name.partition(COMBINE)
    pairs = [n.partition(COMBINE) for n in names if COMBINE in n]
    filters, gratings = wheel_names(records)
    if filt not in filters:
        return f"{filt!r} is not a {instrument} filter; the filters are: {listed(filters)}"
    if grating not in gratings:
        return f"{grating!r} is not a {instrument} grating; the gratings are: {listed(gratings)}"
    with_filter = [g for f, _, g in pairs if f == filt]
    if not with_filter:
        return f"filter {filt!r} is never used with a grating"
    with_grating = [f for f, _, g in pairs if g == grating]
    if len(with_grating) < len(with_filter):
        only = f"grating {grating!r} is used only with filter {listed(with_grating, 8)}"
    else:
        only = f"filter {filt!r} is used only with grating {listed(with_filter, 8)}"
    return f"filter {filt!r} is not used with grating {grating!r}: {only}"
