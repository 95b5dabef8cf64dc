"""Config helpers shared by every config file (big_vision ``configs/common.py`` semantics)."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, *, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
    """Parses ``"key=value,key2=value2"`` against typed defaults.

    ``get_config(arg)`` receives the text after ``:`` in ``--config file.py:res=448,mode=runlocal``.
    Each value is converted to the type of its default (bool accepts true/false/yes/no/1/0);
    a bare ``key`` means ``key=True``. Unknown keys are an error (typos must not pass silently).

    Args:
      arg: the argument string, or None/"" for all defaults.
      lazy: accept unknown keys as strings instead of raising.
      **spec: key -> default value (its type decides the parsing).

    Returns:
      A ConfigDict with one field per key.
    """
    out = ml_collections.ConfigDict(dict(spec))
    if not arg:
        return out
    for item in arg.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in spec:
            if not lazy:
                raise ValueError(
                    f"unknown config argument {key!r} in {arg!r}; known: {', '.join(sorted(spec))}"
                )
            out[key] = value
            continue
        default = spec[key]
        if not eq:
            value = "true"
        out[key] = _convert(key, value, default)
    return out


def _convert(key: str, value: str, default):
    if isinstance(default, bool):
        lowered = value.lower()
        if lowered in ("1", "true", "yes"):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise ValueError(f"config argument {key}={value!r}: expected a boolean")
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            raise ValueError(
                f"config argument {key}={value!r}: expected {type(default).__name__}"
            ) from None
    return value
