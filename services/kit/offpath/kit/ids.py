"""Identifiers: UUIDv7, time-ordered, so ids sort roughly by creation time."""

from __future__ import annotations

import uuid

import uuid_utils


def new_id() -> str:
    """A fresh UUIDv7 in canonical text form."""
    return str(uuid_utils.uuid7())


def is_uuid(text: str) -> bool:
    """True when ``text`` is a UUID in canonical (8-4-4-4-12) form."""
    if len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
