"""The indexed reader: random access, bounded reading, and located errors for hostile files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inferoscope import BundleOpenError, EventReadError, RunReader, load_run_bundle
from inferoscope.bundle.scan import scan_raw_trace
from inferoscope.validation import Location

from .conftest import VALID, make_bundle_parts, write_raw_bundle


def _lines(folder: Path) -> list[str]:
    return (folder / "raw_trace.ndjson").read_text().splitlines()


def _bundle(tmp_path: Path, raw_lines: list[str] | None = None, **kwargs: object) -> Path:
    manifest, events, layout = make_bundle_parts(**kwargs)  # type: ignore[arg-type]
    return write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=raw_lines)


def test_random_access_returns_each_event_exactly_as_stored() -> None:
    folder = VALID / "b_olmoe_64tok_16x64_top8"
    reader = RunReader(folder)
    lines = _lines(folder)
    assert len(reader) == 64
    for i in (63, 0, 17, 40):
        assert reader.raw_line(i) == lines[i].encode()
        assert reader.event(i) == json.loads(lines[i])


def test_token_zero_is_read_without_building_the_index() -> None:
    reader = RunReader(VALID / "b_olmoe_64tok_16x64_top8")
    assert reader.event(0)["token_index"] == 0
    assert not reader.index_ready


def test_blank_lines_and_crlf_are_skipped_but_lines_keep_their_numbers(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=3)
    raw = [
        json.dumps(events[0], sort_keys=True) + "\r",
        "",
        "   \t",
        json.dumps(events[1], sort_keys=True),
        json.dumps(events[2] | {"token_index": 7}, sort_keys=True),
    ]
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=raw)
    reader = RunReader(folder)
    report = reader.validate()
    assert len(reader) == 3
    assert reader.line_number(1) == 4
    [issue] = report.issues
    assert issue.code == "raw_token_index_sequence_invalid"
    assert issue.location.line == 5 and issue.location.token_index == 7


def test_truncated_last_line_is_a_located_parse_error_and_the_rest_reads(tmp_path: Path) -> None:
    folder = _bundle(tmp_path, tokens=4)
    path = folder / "raw_trace.ndjson"
    path.write_bytes(path.read_bytes()[:-400])
    reader = RunReader(folder)
    report = reader.validate()
    assert [(i.code, i.location.line) for i in report.issues] == [("json_parse_error", 4)]
    assert reader.event(2)["token_index"] == 2
    with pytest.raises(EventReadError, match="line 4"):
        reader.event(3)


@pytest.mark.parametrize(
    ("bad_line", "words"),
    [
        ("\x00\xff garbage", "invalid JSON"),
        ("[1, 2, 3]", "must be a JSON object"),
        ('{"a": NaN}', "invalid JSON"),
        ('{"a": Infinity}', "invalid JSON"),
        ('{"a": 1e400}', "overflows"),
        ("\ufeff{}", "byte-order mark"),
    ],
)
def test_hostile_line_is_reported_where_it_is_and_stepping_past_it_works(
    tmp_path: Path, bad_line: str, words: str
) -> None:
    manifest, events, layout = make_bundle_parts(tokens=3)
    raw = [json.dumps(events[0], sort_keys=True), bad_line, json.dumps(events[1], sort_keys=True)]
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=raw)
    reader = RunReader(folder)
    report = reader.validate()
    parse = [i for i in report.issues if i.code == "json_parse_error"]
    assert len(parse) == 1 and parse[0].location.line == 2 and words in parse[0].message
    assert reader.event(2)["token_index"] == 1
    with pytest.raises(EventReadError, match="line 2"):
        reader.event(1)


def test_a_50_mb_single_line_is_reported_not_fatal(tmp_path: Path) -> None:
    folder = _bundle(tmp_path, tokens=2)
    with (folder / "raw_trace.ndjson").open("ab") as handle:
        handle.write(b'{"token_text": "' + b"x" * (50 * 1024 * 1024) + b"\n")
    report = RunReader(folder).validate()
    assert [(i.code, i.location.line) for i in report.issues] == [("json_parse_error", 3)]


def test_wrong_types_are_schema_violations_with_paths(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=2)
    events[1]["token_id"] = "42"
    events[1]["layers"][1]["num_active_experts"] = 2.0
    events[1]["layers"][0]["layer_kind"] = True
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    report = RunReader(folder).validate()
    paths = {i.location.json_path for i in report.issues if i.code == "schema_violation"}
    assert paths == {"$.token_id", "$.layers[1].num_active_experts", "$.layers[0].layer_kind"}
    assert all(i.location.line == 2 for i in report.issues)


@pytest.mark.parametrize("missing", ["manifest.json", "raw_trace.ndjson", "layout.json"])
def test_a_missing_file_is_reported_by_name(tmp_path: Path, missing: str) -> None:
    folder = _bundle(tmp_path)
    (folder / missing).unlink()
    report = RunReader(folder).validate()
    assert any(i.code == "missing_file" and i.location.file == missing for i in report.issues)


def test_a_directory_in_place_of_a_file_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "raw_trace.ndjson").unlink()
    (folder / "raw_trace.ndjson").mkdir()
    report = RunReader(folder).validate()
    assert [i.code for i in report.issues] == ["unreadable_file"]


def test_permission_denied_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _bundle(tmp_path)
    real_open = Path.open

    def guarded(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self.name == "manifest.json":
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", guarded)
    report = RunReader(folder).validate()
    [issue] = [i for i in report.issues if i.location.file == "manifest.json"]
    assert issue.code == "unreadable_file" and "permission denied" in issue.message


@pytest.mark.parametrize("kind", ["missing", "file", "empty_dir"])
def test_a_path_that_is_not_a_bundle_cannot_be_opened(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "file":
        path.write_text("hello")
    elif kind == "empty_dir":
        path.mkdir()
    with pytest.raises(BundleOpenError):
        RunReader(path)


def test_split_scan_over_two_workers_equals_the_single_pass(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=40, layers=3, experts=6)
    events[3]["layers"][1]["entropy"] += 0.5
    events[31]["layers"][2]["topk_indices"] = [5, 5]
    events[35]["token_index"] = 3
    events[38]["layers"][0]["router_probs"].append(0.0)
    raw = [json.dumps(e, sort_keys=True) for e in events]
    raw.insert(25, "not json")
    raw.insert(10, "")
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=raw)
    path = folder / "raw_trace.ndjson"
    one = scan_raw_trace(path, manifest, chunk_events=7, max_kept=1000, workers=1)
    two = scan_raw_trace(path, manifest, chunk_events=7, max_kept=1000, workers=2)
    describe = lambda r: [i.describe() for i in r.report.issues]  # noqa: E731
    assert describe(two) == describe(one)
    assert two.lines == one.lines == len(raw)
    assert np.array_equal(two.index.numbers, one.index.numbers)
    assert np.array_equal(two.index.starts, one.index.starts)
    events_seen = one.report.aggregates.events
    assert two.report.aggregates.events == events_seen
    for index, agg in one.report.aggregates.layers.items():
        theirs = two.report.aggregates.layers[index]
        assert np.array_equal(agg.load, theirs.load)
        assert np.array_equal(agg.pairs.dense(), theirs.pairs.dense())
        for mine, other in zip(agg.token_series(events_seen), theirs.token_series(events_seen), strict=True):
            assert np.array_equal(mine, other, equal_nan=True)
    assert {i.code for i in one.report.issues} >= {
        "entropy_mismatch",
        "duplicate_topk_index",
        "json_parse_error",
        "router_probs_length_mismatch",
    }


def test_aggregates_count_every_top_k_selection() -> None:
    folder = VALID / "b_olmoe_64tok_16x64_top8"
    report = RunReader(folder).validate()
    events = [json.loads(line) for line in _lines(folder)]
    for layer in (0, 9, 15):
        expected = np.zeros(64, dtype=np.int64)
        for event in events:
            np.add.at(expected, event["layers"][layer]["topk_indices"], 1)
        agg = report.aggregates.layers[layer]
        assert np.array_equal(agg.load, expected)
        assert agg.tokens == 64
        mean = np.mean([e["layers"][layer]["normalized_entropy"] for e in events])
        assert agg.mean_normalized_entropy == pytest.approx(mean)
        # per-token series and co-activation, as the run-level views show them
        topk, entropy = agg.token_series(report.aggregates.events)
        assert topk.tolist() == [e["layers"][layer]["topk_indices"] for e in events]
        assert entropy.tolist() == pytest.approx([e["layers"][layer]["normalized_entropy"] for e in events])
        pairs = np.zeros((64, 64), dtype=np.int64)
        for event in events:
            picks = event["layers"][layer]["topk_indices"]
            for a in picks:
                for b in picks:
                    pairs[a, b] += 1
        np.fill_diagonal(pairs, 0)  # an expert "with itself" is its load, kept apart
        assert np.array_equal(agg.pairs.dense(), pairs)
        assert agg.pairs.together(3, 5) == pairs[3, 5] == agg.pairs.together(5, 3)


def test_progress_reaches_the_file_size(tmp_path: Path) -> None:
    folder = _bundle(tmp_path, tokens=30)
    seen: list[tuple[int, int]] = []
    RunReader(folder).validate(progress=lambda done, total: seen.append((done, total)))
    size = (folder / "raw_trace.ndjson").stat().st_size
    assert seen and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_strict_loader_names_every_code(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=3)
    events[0]["layers"][0]["top1_prob"] = 0.01
    events[2]["run_id"] = "someone-else"
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    with pytest.raises(ValueError) as caught:
        load_run_bundle(folder)
    assert "top1_prob_mismatch" in str(caught.value) and "run_id_mismatch" in str(caught.value)
    assert "raw_trace.ndjson line 3" in str(caught.value)


def test_huge_declared_counts_are_checked_without_allocating_them(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=3, layers=1)
    events[2]["layers"][0]["num_total_experts"] = 10**15
    events[0]["layers"][0]["layer_index"] = 2**70
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    codes = {i.code for i in RunReader(folder).validate().issues}
    assert {
        "router_probs_length_mismatch",
        "raw_layer_expert_count_inconsistent",
        "layout_expert_count_mismatch",
    } <= codes


def test_validation_from_a_worker_thread_spawns_instead_of_forking(tmp_path: Path) -> None:
    import threading

    manifest, events, layout = make_bundle_parts(tokens=20)
    events[15]["layers"][0]["entropy"] += 1.0
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    results = []

    def work() -> None:
        results.append(
            scan_raw_trace(folder / "raw_trace.ndjson", manifest, chunk_events=8, max_kept=100, workers=2)
        )

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    [result] = results
    assert [(i.code, i.location.line) for i in result.report.issues] == [("entropy_mismatch", 16)]
    assert result.report.aggregates.events == 20


def test_an_empty_object_line_gives_one_issue_per_missing_field(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=2)
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=["{}", "{}"])
    report = RunReader(folder).validate()
    first = [i.message for i in report.issues if i.location.line == 1]
    assert len(first) == len(set(first)) == 9  # event_type ... layers, each once
    assert {i.location.line for i in report.issues if i.code == "schema_violation"} == {1, 2}


@pytest.mark.parametrize(
    "extra",
    [
        {(): {"zz": 1}},
        {("timing_ms",): {"note": "x"}},
        {("layers", 1): {"gate": [1, 2], "aa": None}},
        {(): {"b": 1, "a": 2}, ("layers", 0): {"x": 1}, ("timing_ms",): {"y": 2}},
    ],
)
def test_unknown_keys_found_cheaply_are_exactly_the_references(
    tmp_path: Path, extra: dict[tuple[object, ...], dict[str, object]]
) -> None:
    from inferoscope.validation.schema import schema_issues

    manifest, events, layout = make_bundle_parts(tokens=3)
    for path, keys in extra.items():
        target: Any = events[1]
        for part in path:
            target = target[part]
        target.update(keys)
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    ours = [(i.message, i.location) for i in RunReader(folder).validate().issues]
    reference = schema_issues(
        events[1],
        "raw_event",
        name="raw_events[1]",
        scope="raw_event",
        location=Location(file="raw_trace.ndjson", line=2, token_index=1),
    )
    assert sorted(ours, key=repr) == sorted(((i.message, i.location) for i in reference), key=repr) and ours


def test_the_first_event_of_a_huge_single_line_file_is_answered_without_reading_it_all(
    tmp_path: Path,
) -> None:
    from inferoscope.bundle.lines import MAX_LINE_BYTES

    folder = _bundle(tmp_path, tokens=1)
    path = folder / "raw_trace.ndjson"
    with path.open("wb") as handle:
        handle.write(b'{"token_text": "')
        handle.truncate(4 * MAX_LINE_BYTES + 10)  # one line, no newline, far past the cap (sparse)
    reader = RunReader(folder)
    first = reader._first_line()
    assert first is not None and first.data is None  # too long to read: reported, not read to its end


def test_a_valid_json_line_past_the_cap_is_reported_not_parsed(tmp_path: Path) -> None:
    from inferoscope.bundle.lines import MAX_LINE_BYTES

    folder = _bundle(tmp_path, tokens=1)
    with (folder / "raw_trace.ndjson").open("a") as handle:
        handle.write('{"token_text": "' + "x" * (MAX_LINE_BYTES + 10) + '"}\n')
    report = RunReader(folder).validate()
    [issue] = [i for i in report.issues if i.location.line == 2]
    assert issue.code == "json_parse_error" and "over the reader's limit" in issue.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.sampled_from([b"a", b"{}", b" ", b"\t", b"\r", b"\n", b"\n\n", b"xyz "]), max_size=60),
    chunk=st.integers(1, 9),
    block=st.integers(1, 5),  # below the cap, as the reader's 1 MiB blocks are below its 32 MiB
)
@example(pieces=[b"a\n", b" " * 10, b"\n", b"\t" * 8], chunk=3, block=4)  # long blank lines
@example(pieces=[b"\r\n", b" " * 10, b"\n\n", b"{}"], chunk=9, block=2)
def test_counting_lines_with_numpy_counts_what_the_reader_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces: list[bytes], chunk: int, block: int
) -> None:
    """Blank and whitespace lines, CRLF, no final newline, lines across chunks and lines past the
    cap (always lines): the fast count is the index's length."""
    from inferoscope.bundle import lines

    monkeypatch.setattr(lines, "MAX_LINE_BYTES", 6)
    path = tmp_path / "trace.ndjson"
    path.write_bytes(b"".join(pieces))
    indexed = sum(1 for _ in lines.iter_lines(path, block_size=block))
    assert lines.count_lines(path, chunk_bytes=chunk) == indexed
    assert lines.count_lines(path) == indexed
