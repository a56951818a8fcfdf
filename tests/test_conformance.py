"""Bundles written by the original library get the same verdicts here (contract, tests/fixtures/upstream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferoscope import RunBundleError, RunReader, load_run_bundle
from inferoscope.jsonfmt import parse_json_bytes
from inferoscope.validation import validate_run_bundle_semantics

from .conftest import INVALID, VALID

VALID_BUNDLES = sorted(p.name for p in VALID.iterdir())
INVALID_BUNDLES = sorted(p.name for p in INVALID.iterdir())


def _expected(name: str) -> dict:
    return json.loads((INVALID / name / "expected.json").read_text())


@pytest.mark.parametrize("name", VALID_BUNDLES)
def test_valid_upstream_bundle_loads_with_no_issue(name: str) -> None:
    bundle = load_run_bundle(VALID / name)
    report = RunReader(VALID / name).validate()
    assert report.total == 0
    assert len(bundle["raw_events"]) == len((VALID / name / "raw_trace.ndjson").read_text().splitlines())
    assert bundle["manifest"]["schema_version"] == "manifest/v0.1.0"


def test_optional_artifacts_are_loaded() -> None:
    bundle = load_run_bundle(VALID / "c_optional_artifacts")
    assert len(bundle["derived_events"]) == 3
    assert bundle["motif_ledger"]["ledger_payload"]["global_motif_counts"] == {"g_000": 2, "g_001": 1}
    assert bundle["contingency"]["schema_version"] == "contingency/v0.1.0-provisional"


def test_empty_raw_trace_is_a_valid_run_of_zero_events() -> None:
    reader = RunReader(VALID / "e_empty_raw_trace")
    assert len(reader) == 0
    assert load_run_bundle(VALID / "e_empty_raw_trace")["raw_events"] == []


@pytest.mark.parametrize("name", INVALID_BUNDLES)
def test_invalid_upstream_bundle_fails_the_strict_loader(name: str) -> None:
    with pytest.raises(RunBundleError) as caught:
        load_run_bundle(INVALID / name)
    for code in _expected(name)["codes"]:
        if _expected(name)["load_fails_at"] == "semantic":
            assert code in str(caught.value)


@pytest.mark.parametrize("name", INVALID_BUNDLES)
def test_invalid_upstream_bundle_reports_the_expected_codes_and_scopes(name: str) -> None:
    expected = _expected(name)
    report = RunReader(INVALID / name).validate()
    found = {(issue.scope, issue.code) for issue in report.issues}
    for item in expected["semantic_issues"] or []:
        assert (item["scope"], item["code"]) in found, (item, found)
    if expected["schema_issues"]:
        assert any(issue.code == "schema_violation" for issue in report.issues)
    if expected["load_fails_at"] == "parse":
        assert report.error_count >= 1
        assert all(issue.location.file for issue in report.issues)


def _load_loose(folder: Path) -> dict:
    """Parse a bundle's files without validating them (for calling the semantic validator)."""

    def read(name: str) -> object:
        path = folder / name
        return parse_json_bytes(path.read_bytes()) if path.exists() else None

    def read_lines(name: str) -> list:
        path = folder / name
        if not path.exists():
            return []
        return [parse_json_bytes(line.encode()) for line in path.read_text().splitlines() if line.strip()]

    return {
        "manifest": read("manifest.json"),
        "raw_events": read_lines("raw_trace.ndjson"),
        "layout": read("layout.json"),
        "derived_events": read_lines("derived.ndjson"),
        "motif_ledger": read("motif_ledger.json"),
        "contingency": read("contingency.json"),
    }


@pytest.mark.parametrize("name", [n for n in INVALID_BUNDLES if _expected(n)["load_fails_at"] != "parse"])
def test_semantic_validator_called_directly_gives_the_upstream_codes_in_scope(name: str) -> None:
    parts = _load_loose(INVALID / name)
    issues = validate_run_bundle_semantics(
        parts["manifest"],
        parts["raw_events"],
        parts["layout"],
        parts["derived_events"],
        parts["motif_ledger"],
        parts["contingency"],
    )
    found = [(issue.scope, issue.code) for issue in issues]
    for item in _expected(name)["semantic_issues"]:
        assert (item["scope"], item["code"]) in found


def test_u2028_inside_token_text_stays_in_its_line(tmp_path: Path) -> None:
    from .conftest import make_bundle_parts, write_raw_bundle

    manifest, events, layout = make_bundle_parts(tokens=3, token_texts=["a", "line\u2028sep\u2029", "c"])
    raw = [json.dumps(e, sort_keys=True, ensure_ascii=False) for e in events]
    folder = write_raw_bundle(tmp_path / "u2028", manifest, events, layout, raw_lines=raw)
    bundle = load_run_bundle(folder)
    assert [e["token_text"] for e in bundle["raw_events"]] == ["a", "line\u2028sep\u2029", "c"]
