"""created_at is strict RFC 3339 (contract §2), leap seconds only where they really happened."""

from __future__ import annotations

import pytest

from inferoscope.validation.rfc3339 import is_rfc3339_date_time
from inferoscope.validation.schema import is_schema_valid

from .conftest import make_bundle_parts


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-24T12:00:00Z",
        "2026-03-24t12:00:00z",
        "2026-03-24T12:00:00.123456+05:30",
        "2024-02-29T00:00:00-00:00",
        "2016-12-31T23:59:60Z",
        "2016-12-31T18:59:60-05:00",
        "1972-06-30T23:59:60Z",
    ],
)
def test_valid_date_times(value: str) -> None:
    assert is_rfc3339_date_time(value)


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-24 12:00:00Z",
        "2026-03-24T12:00:00",
        "2026-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-03-24T24:00:00Z",
        "2026-03-24T12:60:00Z",
        "2026-03-24T12:00:60Z",
        "2017-12-31T23:59:60Z",
        "2016-12-31T23:58:60Z",
        "2026-03-24T12:00:00+24:00",
        "2026-03-24T12:00:00.Z",
        "26-03-24T12:00:00Z",
        "2026-03-24T12:00:00Z\n",
        "２026-03-24T12:00:00Z",
        "",
    ],
)
def test_invalid_date_times(value: str) -> None:
    assert not is_rfc3339_date_time(value)


def test_manifest_with_a_loose_timestamp_fails_the_schema() -> None:
    manifest, _events, _layout = make_bundle_parts()
    manifest["created_at"] = "2026-03-24 12:00"
    assert not is_schema_valid(manifest, "manifest")
