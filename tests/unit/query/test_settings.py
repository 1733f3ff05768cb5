"""Unit tests for QueryService's settings: the worker count."""

from __future__ import annotations

import pytest

from offpath.kit.settings import SettingsError
from offpath.query.settings import ENV_WORKERS, QuerySettings


def test_one_worker_unless_asked() -> None:
    """Without OFFPATH_QUERY_WORKERS QueryService is one process, as before."""
    assert QuerySettings.from_env({}).workers == 1
    assert QuerySettings.from_env({ENV_WORKERS: "4"}).workers == 4


@pytest.mark.parametrize(("value", "problem"), [("0", "below"), ("65", "above"), ("two", "not")])
def test_worker_count_out_of_range_is_refused(value: str, problem: str) -> None:
    """0, more than 64, or not a number: start-up refuses, naming the variable."""
    with pytest.raises(SettingsError, match=f"OFFPATH_QUERY_WORKERS='{value}' is {problem}"):
        QuerySettings.from_env({ENV_WORKERS: value})
