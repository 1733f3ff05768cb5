"""Identifiers: UUIDv7, time-ordered, so ids sort roughly by creation time."""

from __future__ import annotations

import re

import uuid_utils

# 8-4-4-4-12 hex digits, either case: uuid.UUID also takes braces, "urn:uuid:",
# hyphens anywhere and a sign, none of which an id we issue has.
_CANONICAL = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def new_id() -> str:
    """A fresh UUIDv7 in canonical text form."""
    return str(uuid_utils.uuid7())


def is_uuid(text: str) -> bool:
    """True when ``text`` is a UUID in canonical (8-4-4-4-12) form."""
    return _CANONICAL.fullmatch(text) is not None
