"""Secrets by reference, and masking wherever text leaves the process.

An inventory never holds a secret itself: it names where one is (``{env: NAME}`` or
``{file: PATH}``). :func:`resolve` reads it when it is needed and registers the value, and
:func:`mask` replaces every registered value, and any PEM private key, in text bound for a log, an
error message, an Allure attachment or ``summary.json``. This module imports nothing of mdevtest
(errors use it).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

__all__ = ["MASK", "SecretUnavailable", "forget", "mask", "mask_data", "register", "resolve"]

MASK = "********"
#: Shorter values are not masked (they would blank out ordinary words); a secret that short
#: is not one worth the name.
MIN_MASKED = 4
_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)

_lock = threading.Lock()
_values: set[str] = set()


class SecretUnavailable(ValueError):
    """The environment variable or file a secret reference names is not there."""


def register(value: str) -> None:
    """Mask ``value`` from now on (in this process)."""
    if len(value) >= MIN_MASKED:
        with _lock:
            _values.add(value)


def forget(value: str) -> None:
    """Stop masking ``value`` (tests that register throw-away values clean up with it)."""
    with _lock:
        _values.discard(value)


def resolve(*, env: str | None = None, file: Path | None = None) -> str:
    """The secret a reference names (exactly one of ``env`` and ``file``), registered for masking.

    A file's content is taken without its trailing newline.
    """
    if (env is None) == (file is None):
        raise SecretUnavailable("a secret reference names exactly one of env and file")
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise SecretUnavailable(f"environment variable {env} is not set")
    else:
        assert file is not None
        try:
            value = file.read_text().rstrip("\n")
        except OSError as exc:
            raise SecretUnavailable(f"cannot read {file}: {exc.strerror or exc}") from None
    register(value)
    return value


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`MASK` and private keys removed."""
    text = _PRIVATE_KEY.sub("[private key removed]", text)
    with _lock:
        values = sorted(_values, key=len, reverse=True)  # a secret containing another: longest first
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask_data(data: Any) -> Any:
    """A copy of JSON-like ``data`` with :func:`mask` applied to every string (keys too), so a
    secret is masked before JSON escapes it into a form :func:`mask` would not recognise."""
    if isinstance(data, str):
        return mask(data)
    if isinstance(data, dict):
        return {mask(str(k)) if isinstance(k, str) else k: mask_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_data(v) for v in data]
    return data
