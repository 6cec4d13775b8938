"""Problems with a run configuration, and the one place pydantic's errors become cpflow's messages.

The models type their fields strictly (`pydantic.StrictInt`, ``Field(strict=True, ge=..., le=...)``,
`typing.Literal`, ...), so pydantic finds every type and range problem. `configuration_error` turns
its errors into cpflow's wording, ``"<key>: <what is wrong>; <what is valid>"``, reading what is valid
from the field itself: its type, its bounds and two optional markers, `Noun` (what the value is) and
`Unit` (what a number counts). A bound is therefore written once, in the field, and appears in both the
check and the message.

Cross-field rules (`shared.runconfig.checked`) report their problems as pydantic errors of type
`RULE_ERROR`, so that they reach the same converter with the key they name.
"""

from __future__ import annotations

import difflib
import enum
import reprlib
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn, TypeGuard, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, Tag, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "MAX_MESSAGES",
    "RULE_ERROR",
    "ConfigurationError",
    "Noun",
    "Null",
    "Unit",
    "configuration_error",
    "describe",
    "key_text",
    "raise_with_problems",
    "rule_error",
    "unknown_key_message",
]

RULE_ERROR = "cpflow_rule"
"""pydantic error type of a problem found by a cpflow rule; its ``message`` is already in our words."""

_MAX_KEYS_LISTED = 12
"""A mapping type is described by its keys when it has at most this many."""

MAX_MESSAGES = 50
"""Most messages a `ConfigurationError` carries; the rest are counted (a rejection stays readable and
small enough for an event)."""


class ConfigurationError(ValueError):
    """A run configuration was rejected.

    Parameters
    ----------
    errors : `list` [`str`] or `str`
        One message per problem, each ``"<key>: <what is wrong>; <what is valid>"``.

    Attributes
    ----------
    errors : `list` [`str`]
        The messages; ``str(exc)`` joins them with newlines.
    """

    errors: list[str]

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class Noun:
    """Field marker: what the value is, in messages (``"a number of seconds"``); the bounds follow it.

    Without it a field is described by its type (``"an integer"``, ``"a number"``, ``"a string"``...).
    """

    text: str


@dataclass(frozen=True)
class Unit:
    """Field marker: what a number counts, appended in parentheses (``"e⁻/s per pixel"``)."""

    text: str


@dataclass(frozen=True)
class Null:
    """Field marker: what null means for a field that accepts it (``"all frames"``)."""

    text: str


_REPR = reprlib.Repr()  # renders a value in bounded time and length, however large or deep it is
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 70, 70
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def describe(value: Any) -> str:
    """Render a submitted value for a message: YAML spelling for null and booleans, at most 80 characters."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _REPR.repr(value)
    except Exception:  # a foreign object whose repr fails
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def key_text(key: Any) -> str:
    """A mapping key as text: itself if a string, else rendered by `describe` (``1`` -> ``"1"``)."""
    return key if isinstance(key, str) else describe(key)


def unknown_key_message(key: str, valid: Iterable[str]) -> str:
    """``"unknown key 'x'; did you mean 'y'?"``, or the list of valid keys when none is close."""
    names = list(valid)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; valid keys are: {', '.join(_key_families(names))}"


_TYPE_SUFFIXES = ("bias", "dark", "flat", "defects", "ptc")


def _key_families(names: Iterable[str]) -> list[str]:
    """Sorted key names, with the per-type families folded: ``n_{bias,dark,flat}``."""
    families: dict[str, list[str]] = {}
    for name in sorted(names):
        stem, _, suffix = name.rpartition("_")
        if stem and suffix in _TYPE_SUFFIXES:
            families.setdefault(stem + "_", []).append(suffix)
        else:
            families.setdefault(name, [])
    shown = []
    for stem, suffixes in families.items():
        if len(suffixes) > 1:
            ordered = sorted(suffixes, key=_TYPE_SUFFIXES.index)
            shown.append(f"{stem}{{{','.join(ordered)}}}")
        elif suffixes:
            shown.append(stem + suffixes[0])
        else:
            shown.append(stem)
    return shown


def rule_error(loc: tuple[str | int, ...], message: str, value: Any = None) -> InitErrorDetails:
    """A rule's problem as a pydantic error at ``loc`` (a key path relative to the model checked)."""
    return InitErrorDetails(
        type=PydanticCustomError(RULE_ERROR, "{message}", {"message": message}), loc=loc, input=value
    )


def raise_with_problems(
    title: str, exc: ValidationError | None, problems: Sequence[InitErrorDetails]
) -> NoReturn:
    """Raise one `ValidationError` with the errors of ``exc`` (if any) followed by ``problems``.

    Raised inside a validator, it is merged into the enclosing validation, with every location
    prefixed by where the model sits, as any error pydantic finds itself.
    """
    found: list[InitErrorDetails] = []
    for err in exc.errors() if exc is not None else ():
        ctx = err.get("ctx")
        kind: str | PydanticCustomError = err["type"]
        if kind == RULE_ERROR and ctx is not None:
            kind = PydanticCustomError(RULE_ERROR, "{message}", ctx)
        details = InitErrorDetails(type=kind, loc=err["loc"], input=err["input"])
        if ctx is not None:
            details["ctx"] = ctx
        found.append(details)
    raise ValidationError.from_exception_data(title, [*found, *problems])


# --------------------------------------------------------------------------------------------------
# What a field accepts, read from its annotation.


@dataclass(frozen=True)
class _Slot:
    """A field (or an item of one) as the converter sees it: its bare type and its metadata."""

    annotation: Any
    metadata: tuple[Any, ...] = ()
    nullable: bool = False

    def marker(self, kind: type[Noun] | type[Unit] | type[Null]) -> str | None:
        return next((m.text for m in self.metadata if isinstance(m, kind)), None)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _slot(annotation: Any, metadata: Iterable[Any] = ()) -> _Slot:
    """Unwrap ``Annotated`` and ``X | None`` into the bare type, its metadata and whether null is valid."""
    found = list(metadata)
    nullable = False
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            found.extend(extra)
        elif _is_union(annotation) and type(None) in get_args(annotation):
            nullable = True
            rest = tuple(a for a in get_args(annotation) if a is not type(None))
            annotation = rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007
        else:
            break
    flat: list[Any] = []
    for item in found:
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return _Slot(annotation, tuple(flat), nullable)


def _choices(slot: _Slot) -> list[str] | None:
    """The values of a `typing.Literal` or enum field, else `None`."""
    if get_origin(slot.annotation) is Literal:
        return [str(v) for v in get_args(slot.annotation)]
    if isinstance(slot.annotation, type) and issubclass(slot.annotation, enum.Enum):
        return [str(m.value) for m in slot.annotation]
    return None


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return format(value, "g") if isinstance(value, float) else str(value)


def _bounds(metadata: Sequence[Any], *, full: bool) -> str:
    """``"≥ 1"``, ``"> 0"`` or, with ``full``, ``"between 1 and 1000"``, from the field's constraints."""
    lower = upper = ""
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lower, low = f"≥ {_number(item.ge)}", item.ge
        elif isinstance(item, annotated_types.Gt):
            lower = f"> {_number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            upper, high = f"≤ {_number(item.le)}", item.le
        elif isinstance(item, annotated_types.Lt):
            upper = f"< {_number(item.lt)}"
    if full and lower and upper:
        if low is not None and high is not None:
            return f"between {_number(low)} and {_number(high)}"
        return f"{lower} and {upper}"
    return lower or upper


def _expected(slot: _Slot | None, *, full: bool = False) -> str:
    """What the field accepts, e.g. ``"an integer ≥ 1"`` or ``"a number of seconds > 0 or null"``."""
    if slot is None:
        return "a valid value"
    noun, unit = slot.marker(Noun), slot.marker(Unit)
    annotation = slot.annotation
    choices = _choices(slot)
    if choices is not None:
        text = "one of " + ", ".join(choices)
    elif _is_union(annotation):
        text = " or ".join(_expected(_slot(member)) for member in get_args(annotation))
    elif annotation is bool:
        text = "true or false"
    elif annotation in (int, float):
        base = noun or ("an integer" if annotation is int else "a number")
        bounds = _bounds(slot.metadata, full=full)
        text = f"{base} {bounds}" if bounds else base
        if unit:
            text += f" ({unit})"
    elif noun:
        text = noun
    elif annotation is str:
        text = "a string"
    elif _is_model(annotation):
        fields = annotation.model_fields
        if len(fields) > _MAX_KEYS_LISTED:
            text = "a mapping of configuration keys to values"
        else:
            keys = [name + (" (required)" if f.is_required() else "") for name, f in fields.items()]
            text = "a mapping with keys " + ", ".join(keys)
    elif get_origin(annotation) is list:
        text = "a list"
    else:
        text = "a valid value"
    return text + _or_null(slot)


def _or_null(slot: _Slot) -> str:
    # A null section is its defaults: not worth telling.
    if not slot.nullable or _is_model(slot.annotation):
        return ""
    meaning = slot.marker(Null)
    return f" or null ({meaning})" if meaning else " or null"


def _valid(slot: _Slot | None) -> str:
    choices = _choices(slot) if slot is not None else None
    if slot is not None and choices is not None:
        return f"valid values are: {', '.join(choices)}{_or_null(slot)}"
    return f"give {_expected(slot)}"


@dataclass(frozen=True)
class _Where:
    """Where an error is: its key as the user writes it (``simulator.faults[0].kind``) and its field."""

    key: str
    name: str
    parent: str
    parent_keys: tuple[str, ...]
    slot: _Slot | None


def _join(parent: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{parent}[{part}]"
    return f"{parent}.{part}" if parent else part


def _member(union: Any, tag: str) -> _Slot | None:
    """The member of a discriminated union that carries ``Tag(tag)``."""
    for member in get_args(union):
        slot = _slot(member)
        if any(isinstance(m, Tag) and m.tag == tag for m in slot.metadata):
            return slot
    return None


def _locate(model: type[BaseModel], loc: tuple[str | int, ...]) -> _Where:
    key, name, parent, parent_keys = "", "", "", tuple(model.model_fields)
    slot: _Slot | None = _Slot(model)
    for part in loc:
        annotation = slot.annotation if slot is not None else None
        if isinstance(part, str) and _is_union(annotation):
            slot = _member(annotation, part)  # a discriminated union's tag: not a key
            continue
        parent, name = key, str(part)
        key = _join(key, part)
        if _is_model(annotation):
            parent_keys = tuple(annotation.model_fields)
            field = annotation.model_fields.get(name)
            slot = _slot(field.annotation, field.metadata) if field is not None else None
        elif isinstance(part, int):
            args = get_args(annotation)
            if get_origin(annotation) is list and args:
                slot = _slot(args[0])
            elif get_origin(annotation) is tuple and args:
                slot = _slot(args[0] if args[-1] is Ellipsis else args[min(part, len(args) - 1)])
            else:
                slot = None
        else:
            slot = None
    return _Where(key or "configuration", name, parent, parent_keys, slot)


def _message(err: Any, model: type[BaseModel]) -> list[str]:
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, ConfigurationError):
        return list(inner.errors)
    kind, value = err["type"], err.get("input")
    where = _locate(model, err["loc"])
    if kind == RULE_ERROR:
        return [f"{where.key}: {ctx['message']}" if err["loc"] else str(ctx["message"])]
    if kind in ("extra_forbidden", "invalid_key"):
        message = unknown_key_message(where.name, where.parent_keys)
        return [f"{where.parent}: {message}" if where.parent else message]
    if kind == "missing":
        return [f"{where.key}: required; {_valid(where.slot)}"]
    if kind in ("literal_error", "enum"):
        noun = where.name.replace("_", " ")
        return [f"{where.key}: unknown {noun} {describe(value)}; {_valid(where.slot)}"]
    if kind in ("value_error", "assertion_error") and inner is not None:
        return [f"{where.key}: {inner}"]
    if kind in ("less_than_equal", "less_than"):
        limit = _number(ctx.get("le", ctx.get("lt")))
        relation = "above the maximum" if kind == "less_than_equal" else "not below"
        valid = _expected(where.slot, full=True)
        return [f"{where.key}: {describe(value)} is {relation} {limit}; give {valid}"]
    if kind in ("too_long", "string_too_long"):
        what = "characters" if kind == "string_too_long" else "items"
        actual = ctx.get("actual_length", len(value) if hasattr(value, "__len__") else "too many")
        return [f"{where.key}: has {actual} {what}, more than the maximum {ctx['max_length']}; shorten it"]
    return [f"{where.key}: must be {_expected(where.slot)}, got {describe(value)}"]


def configuration_error(exc: ValidationError, model: type[BaseModel]) -> ConfigurationError:
    """Turn a pydantic `ValidationError` of ``model`` into a `ConfigurationError` in cpflow's words.

    Parameters
    ----------
    exc : `pydantic.ValidationError`
        The errors of validating ``model`` (field errors and the problems of cpflow's rules).
    model : `type` [`pydantic.BaseModel`]
        The model validated; its fields say what is valid.

    Returns
    -------
    error : `ConfigurationError`
        One message per problem, in the order found.
    """
    messages: list[str] = []
    for err in exc.errors(include_url=False):
        messages.extend(_message(err, model))
    messages = list(dict.fromkeys(messages)) or [str(exc)]
    if len(messages) > MAX_MESSAGES:
        more = len(messages) - (MAX_MESSAGES - 1)
        messages = [*messages[: MAX_MESSAGES - 1], f"... and {more} more problems"]
    return ConfigurationError(messages)
