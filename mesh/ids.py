"""Identifiers and page tokens: the one place that decides what an id or a token looks like."""

from __future__ import annotations

import base64
import binascii
import uuid


def canonical_uuid(value: str) -> str | None:
    """The canonical text of a UUID, or ``None`` if ``value`` is not one.

    Services pass the canonical form on: PostgreSQL refuses some spellings ``uuid.UUID``
    accepts (braces, ``urn:uuid:``).
    """
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def encode_page_token(text: str) -> str:
    """An opaque, URL-safe page token carrying ``text``."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str | None:
    """The text in a token from :func:`encode_page_token`; ``None`` if it is not one."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
