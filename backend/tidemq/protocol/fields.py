"""Reading request fields with types checked: a wrong type is the client's error
(``InvalidArgument``, code INVALID_ARGUMENT), never a crash of the handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidemq.errors import InvalidArgument


def string(fields: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str):
        raise InvalidArgument(f"field {name!r} must be a string")
    return value


def integer(fields: Mapping[str, Any], name: str, default: int | None = None, *,
            minimum: int | None = None, maximum: int | None = None) -> int:
    value = fields.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"field {name!r} must be an integer")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"field {name!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"field {name!r} must be <= {maximum}")
    return value


def optional_integer(fields: Mapping[str, Any], name: str) -> int | None:
    if fields.get(name) is None:
        return None
    return integer(fields, name)


def boolean(fields: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"field {name!r} must be true or false")
    return value


def string_map(fields: Mapping[str, Any], name: str) -> dict[str, str]:
    value = fields.get(name, {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgument(f"field {name!r} must be a map of strings")
    return dict(value)


def integer_list(fields: Mapping[str, Any], name: str) -> list[int]:
    value = fields.get(name, [])
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        raise InvalidArgument(f"field {name!r} must be a list of integers")
    return list(value)


def map_list(fields: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = fields.get(name, [])
    if not isinstance(value, list | tuple) or not all(isinstance(i, Mapping) for i in value):
        raise InvalidArgument(f"field {name!r} must be a list of maps")
    return list(value)
