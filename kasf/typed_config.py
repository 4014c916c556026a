"""Config values checked against their declared type: one rule for the model's keys and the training keys.

Why: a YAML value of the wrong type used to reach the constructor unchecked and fail deep inside PyTorch with a
traceback. PyYAML also reads ``1e-05`` as a *string* (YAML 1.1 floats need a dot), and reference configs are full
of such values, so a numeric string is accepted as the number the user meant. Anything else of the wrong type is
one line naming the key, the value and the type expected.
"""

from __future__ import annotations

from typing import Any

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class ConfigTypeError(ValueError):
    """A config value whose type does not fit its key."""


def _number(text: str) -> float:
    return float(text.strip())


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    number = _number(value) if isinstance(value, str) else float(value) if isinstance(value, float) else None
    if number is None or not number.is_integer():
        raise ValueError(value)
    return int(number)


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):  # an int is a float here, as in Python's annotations; kept as given
        return value
    if isinstance(value, str):
        return _number(value)
    raise ValueError(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(value)


def _as_str(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(value)


def _as_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [_as_str(v) for v in value]
    raise ValueError(value)


def _as_float_list(value: Any) -> list[float]:
    if isinstance(value, str):
        return [_as_float(v) for v in value.strip("[] ").split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [_as_float(v) for v in value]
    raise ValueError(value)


_CONVERTERS = {"int": _as_int, "float": _as_float, "bool": _as_bool, "str": _as_str, "list[str]": _as_str_list,
               "list[float]": _as_float_list}


def coerce_value(key: str, value: Any, expected: str) -> Any:
    """``value`` as the type named by the annotation text ``expected`` (e.g. 'float', 'int | None', 'list[str]').

    Types this module does not know (e.g. a class) pass through unchanged; a value that does not fit raises
    :class:`ConfigTypeError`.
    """
    options = [part.strip() for part in expected.split("|")]
    if "None" in options and (value is None or (isinstance(value, str) and value.strip() in ("None", "null", ""))):
        return None
    for option in options:
        converter = _CONVERTERS.get(option)
        if converter is None:
            continue
        try:
            return converter(value)
        except (TypeError, ValueError):
            pass
    if not any(option in _CONVERTERS for option in options):
        return value
    shown = " or ".join(o for o in options if o in _CONVERTERS or o == "None")
    raise ConfigTypeError(f"key '{key}' expects {shown}, got {value!r} ({type(value).__name__})")
