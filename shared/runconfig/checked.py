"""Models whose rules across keys run even when some keys are invalid, so every problem is reported at once.

pydantic runs a model's "after" validators only when every field is valid, so a configuration with a
misspelt key would not be told that its ``exp_times_dark`` has the wrong length. A `CheckedModel`
instead runs each `Rule` whose keys are all valid: when field validation fails, the fields that
failed are left out (required ones get a placeholder), the rest is validated again and the rules
that read none of the failed keys are run on that; their problems are reported with the field
errors, in one `pydantic.ValidationError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from shared.runconfig.errors import key_text, raise_with_problems, rule_error

__all__ = ["CheckedModel", "Problem", "Rule", "rule"]

Problem = tuple[str, str]
"""A rule's finding: the key it is about (``""`` for the whole model) and the message."""

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Rule[ModelT: BaseModel]:
    """A check across keys.

    Attributes
    ----------
    reads : `frozenset` [`str`]
        The keys it reads; it runs only when all of them are valid.
    check : callable
        ``check(model, given)`` yields `Problem` s; ``given`` is the set of keys the user wrote
        (before any default was filled in).
    """

    reads: frozenset[str]
    check: Callable[[ModelT, frozenset[str]], Iterable[Problem]]


def rule(*reads: str) -> Callable[[Callable[[ModelT, frozenset[str]], Iterable[Problem]]], Rule[ModelT]]:
    """Decorator making a `Rule` of a check function that reads the keys ``reads``."""

    def make(check: Callable[[ModelT, frozenset[str]], Iterable[Problem]]) -> Rule[ModelT]:
        return Rule(frozenset(reads), check)

    return make


def _placeholder(annotation: Any) -> Any:
    """A valid stand-in for a required `typing.Literal` or enum field, else `None`."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return next(iter(annotation)).value
    return None


class CheckedModel(BaseModel):
    """A model with cross-key rules (`rules`) and defaults that depend on other keys (`prepare`)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fill in defaults that depend on other keys, before the fields are validated."""
        return data

    @classmethod
    def rules(cls) -> Sequence[Rule[Any]]:
        """The model's rules, run in this order."""
        return ()

    @model_validator(mode="wrap")
    @classmethod
    def _check_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if not isinstance(data, Mapping):
            return handler(data)
        given = frozenset(key_text(key) for key in data)
        prepared = cls.prepare({key_text(key): value for key, value in data.items()})
        try:
            model = handler(prepared)
        except ValidationError as exc:
            invalid = frozenset(str(err["loc"][0]) for err in exc.errors() if err["loc"])
            partial = cls._partial(prepared, invalid, handler)
            problems = [] if partial is None else cls._problems(partial, given, invalid)
            if not problems:
                raise
            raise_with_problems(cls.__name__, exc, problems)
        problems = cls._problems(model, given, frozenset())
        if problems:
            raise_with_problems(cls.__name__, None, problems)
        return model

    @classmethod
    def _partial(
        cls, data: dict[str, Any], invalid: frozenset[str], handler: ModelWrapValidatorHandler[Self]
    ) -> Self | None:
        """The model without the invalid keys, for the rules that do not read them (`None` if impossible)."""
        reduced = {key: value for key, value in data.items() if key not in invalid}
        for name, field in cls.model_fields.items():
            if name in invalid and field.is_required():
                placeholder = _placeholder(field.annotation)
                if placeholder is None:
                    return None
                reduced[name] = placeholder
        try:
            return handler(reduced)
        except ValidationError:
            return None

    @classmethod
    def _problems(cls, model: Self, given: frozenset[str], invalid: frozenset[str]) -> list[InitErrorDetails]:
        found: list[InitErrorDetails] = []
        for check in cls.rules():
            if check.reads & invalid:
                continue
            for key, message in check.check(model, given):
                found.append(rule_error((key,) if key else (), message, getattr(model, key, None)))
        return found
