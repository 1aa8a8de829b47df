"""Keep API tokens and passwords out of everything trackers record.

A key is secret-like when its name says token, secret, password, API key, credential or private
key. Secret-like keys are dropped from parameters, and the values of secret-like environment
variables (and of secret-like keys in the parameters themselves) are masked wherever they appear in
text a tracker or a warning would carry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_NAME = re.compile(r"token|secret|passw|pwd|api_?key|apikey|credential|private_?key|auth_?key", re.IGNORECASE)
MASK = "[redacted]"
#: Shorter values are not masked inside text: masking "1" or "true" everywhere would garble it.
_MIN_SECRET_LENGTH = 6


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_key_paths(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the secret-like keys in a nested structure, at every depth (lists included)."""
    found: list[str] = []
    if isinstance(values, Mapping):
        for key, value in values.items():
            path = f"{prefix}{key}"
            if is_secret_name(str(key)):
                found.append(path)
            found += secret_key_paths(value, f"{path}.")
    elif isinstance(values, list | tuple):
        for i, value in enumerate(values):
            found += secret_key_paths(value, f"{prefix}{i}.")
    return found


def secret_values(extra: Iterable[str] = ()) -> list[str]:
    """Values of secret-like environment variables (and ``extra``), longest first."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LENGTH}
    values.update(v for v in extra if len(v) >= _MIN_SECRET_LENGTH)
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every known secret value replaced by a mask."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def _collect_secret_values(values: Any, found: list[str]) -> None:
    if isinstance(values, Mapping):
        for key, value in values.items():
            if is_secret_name(str(key)) and isinstance(value, str):
                found.append(value)
            else:
                _collect_secret_values(value, found)
    elif isinstance(values, list | tuple):
        for value in values:
            _collect_secret_values(value, found)


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` without secret-like keys and with secret values masked in strings."""
    found: list[str] = []
    _collect_secret_values(params, found)
    secrets = secret_values(found)

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items() if not is_secret_name(str(k))}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return redact_text(value, secrets)
        return value

    cleaned: dict[str, Any] = clean(params)
    return cleaned


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested parameters as ``a.b`` keys with scalar values (None and lists as text)."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = "None" if value is None else str(value)
    return flat
