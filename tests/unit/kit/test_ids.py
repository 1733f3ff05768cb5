"""Unit tests for offpath.kit.ids."""

from __future__ import annotations

import pytest

from offpath.kit.ids import is_uuid, new_id


def test_new_ids_are_canonical_and_distinct() -> None:
    ids = [new_id() for _ in range(100)]
    assert all(is_uuid(i) for i in ids)
    assert len(set(ids)) == 100


@pytest.mark.parametrize(
    "text",
    ["0190f5e2-7c1a-7b3e-9d4f-0123456789ab", "0190F5E2-7C1A-7B3E-9D4F-0123456789AB"],
)
def test_canonical_forms_are_uuids(text: str) -> None:
    assert is_uuid(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0190f5e2-7c1a-7b3e-9d4f-0123456789a",  # one digit short
        "0190f5e27c1a7b3e9d4f0123456789ab",  # no hyphens
        "----0190f5e27c1a7b3e9d4f0123456789ab",  # hyphens elsewhere: uuid.UUID takes it
        "+190f5e27c1a7b3e9d4f0123456789ab----",  # a sign: int() inside uuid.UUID takes it
        "{0190f5e2-7c1a-7b3e-9d4f-0123456789}",
        "0190f5e2-7c1a-7b3e-9d4f-0123456789ag",
        "0190f5e2-7c1a-7b3e-9d4f-0123456789ab\n",
    ],
)
def test_other_forms_are_not(text: str) -> None:
    assert not is_uuid(text)
