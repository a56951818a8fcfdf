"""Property tests: round trips, every single mutation caught, fast path == jsonschema reference."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferoscope import RunReader, load_run_bundle, write_run_bundle
from inferoscope.extraction import (
    MoELayerCaptureInput,
    build_layer_grid_layout,
    build_manifest,
    build_token_complete_event,
)
from inferoscope.validation.raw_event import RAW_EVENT_DECODER
from inferoscope.validation.schema import is_schema_valid

from .conftest import write_raw_bundle

SETTINGS = settings(
    max_examples=int(os.environ.get("INFEROSCOPE_HYPOTHESIS_EXAMPLES", "100")),
    derandomize=not os.environ.get("INFEROSCOPE_HYPOTHESIS_RANDOM"),  # CI is deterministic
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
logit = st.floats(min_value=-30, max_value=30, allow_nan=False, allow_infinity=False)


@st.composite
def bundles(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    tokens = draw(st.integers(0, 5))
    shapes = draw(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3))
    shapes = [(n, min(k, n)) for n, k in shapes]
    run_id = draw(
        st.text(
            st.characters(blacklist_characters="/\\:\x00", blacklist_categories=("Cs",)),
            min_size=1,
            max_size=12,
        ).filter(lambda s: s not in (".", ".."))
    )
    texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
    manifest = build_manifest(
        run_id=run_id,
        created_at="2026-11-26T12:00:00Z",
        model_id="m",
        tokenizer_id="t",
        prompt_text=draw(texts),
        derivation_version="d",
        derivation_config_id="c",
        seed=draw(st.none() | st.integers(-(2**70), 2**70)),
    )
    events = []
    for t in range(tokens):
        layers = [
            MoELayerCaptureInput(i, draw(st.lists(logit, min_size=n, max_size=n)), k)
            for i, (n, k) in enumerate(shapes)
        ]
        start = draw(st.floats(0, 1e6))
        events.append(
            build_token_complete_event(
                run_id=run_id,
                token_index=t,
                token_id=draw(st.integers(-(2**70), 2**70)),
                token_text=draw(texts),
                context_length=t,
                decode_start_ms=start,
                decode_end_ms=start + draw(st.floats(0, 1e3)),
                layer_inputs=layers,
            )
        )
    layout = build_layer_grid_layout(
        run_id=run_id, layout_id="g", layer_expert_counts=[(i, n) for i, (n, _) in enumerate(shapes)]
    )
    return manifest, events, layout


@SETTINGS
@given(bundles())
def test_random_valid_bundles_round_trip_unchanged(parts: tuple[Any, Any, Any]) -> None:
    manifest, events, layout = parts
    with tempfile.TemporaryDirectory() as root:
        loaded = load_run_bundle(write_run_bundle(root, manifest, events, layout))
    assert loaded["manifest"] == manifest
    assert loaded["raw_events"] == events
    assert loaded["layout"] == layout


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _paths(item, (*prefix, key))] + [prefix]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _paths(item, (*prefix, i))] + [prefix]
    return [prefix]


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


MUTATIONS = ["bump", "drop", "wrong_type", "extra_key", "bool", "negate", "append", "truncate"]


def _mutate(event: dict[str, Any], path: tuple[Any, ...], how: str) -> bool:
    """Apply one mutation; False when it does not apply to this path (or changes nothing)."""
    target = _get(event, path) if path else event
    parent = _get(event, path[:-1]) if path else None
    if how == "bump" and isinstance(target, (int, float)) and not isinstance(target, bool) and path:
        if path[-1] in ("token_id", "context_length", "token_text"):
            return False  # free values: any integer is allowed there
        _set(event, path, target + (0.01 if isinstance(target, float) else 1))
    elif how == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how == "wrong_type" and path:
        _set(event, path, "x" if not isinstance(target, str) else 1)
    elif how == "extra_key" and isinstance(target, dict):
        target["unexpected"] = 1
    elif how == "bool" and path and not isinstance(target, (list, dict)):
        _set(event, path, True)
    elif how == "negate" and isinstance(target, (int, float)) and not isinstance(target, bool) and target > 0:
        if path[-1] in ("token_id", "decode_start", "decode_end"):
            return False
        _set(event, path, -target)
    elif how == "append" and isinstance(target, list) and path and path[-1] != "layers":
        target.append(0.0 if not target or isinstance(target[0], float) else 0)
    elif how == "truncate" and isinstance(target, list) and len(target) > 0 and path[-1] != "layers":
        target.pop()
    else:
        return False
    return True


@SETTINGS
@given(bundles().filter(lambda p: len(p[1]) > 0), st.data())
def test_every_single_mutation_of_a_valid_event_is_caught(
    parts: tuple[Any, Any, Any], data: st.DataObject
) -> None:
    manifest, events, layout = parts
    victim = data.draw(st.integers(0, len(events) - 1))
    mutated = copy.deepcopy(events)
    paths = [p for p in _paths(mutated[victim]) if p]
    path = data.draw(st.sampled_from(paths))
    how = data.draw(st.sampled_from(MUTATIONS))
    if not _mutate(mutated[victim], path, how) or mutated[victim] == events[victim]:
        return
    if path[-1] == "token_text" or (len(path) >= 2 and path[-2] == "token_text"):
        return
    if (
        len(path) == 3
        and path[2] in ("entropy", "normalized_entropy")
        and how == "bump"
        and events[victim]["layers"][path[1]]["num_total_experts"] == 1
    ):
        return  # contract §4 checks entropy only for n > 1: with one expert it is not a violation
    with tempfile.TemporaryDirectory() as root:
        folder = write_raw_bundle(Path(root) / "b", manifest, mutated, layout)
        report = RunReader(folder).validate()
    assert report.error_count > 0, (path, how)
    line = victim + 1
    assert any(i.location.line == line or f"line {line})" in i.message for i in report.issues), (path, how)


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**66), 2**66)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)


@SETTINGS
@given(bundles().filter(lambda p: len(p[1]) > 0), st.data())
def test_fast_typed_decode_never_accepts_what_the_reference_rejects(
    parts: tuple[Any, Any, Any], data: st.DataObject
) -> None:
    _manifest, events, _layout = parts
    event = copy.deepcopy(events[0])
    for _ in range(data.draw(st.integers(0, 3))):
        paths = [p for p in _paths(event) if p]
        path = data.draw(st.sampled_from(paths))
        _set(event, path, data.draw(json_leaf))
    line = json.dumps(event, sort_keys=True).encode()
    reference = is_schema_valid(json.loads(line), "raw_event")
    try:
        RAW_EVENT_DECODER.decode(line)
        fast = True
    except (msgspec.ValidationError, msgspec.DecodeError):
        fast = False
    assert not fast or reference
    if fast:
        assert msgspec.json.decode(line) == json.loads(line)


@SETTINGS
@given(bundles().filter(lambda p: len(p[1]) > 0), st.data())
def test_reader_schema_verdict_equals_the_reference_on_mutated_lines(
    parts: tuple[Any, Any, Any], data: st.DataObject
) -> None:
    manifest, events, layout = parts
    event = copy.deepcopy(events[0])
    paths = [p for p in _paths(event) if p]
    _set(event, data.draw(st.sampled_from(paths)), data.draw(json_leaf))
    with tempfile.TemporaryDirectory() as root:
        folder = write_raw_bundle(Path(root) / "b", manifest, [event], layout)
        report = RunReader(folder).validate()
    ours = any(i.code == "schema_violation" and i.location.line == 1 for i in report.issues)
    assert ours == (not is_schema_valid(event, "raw_event"))


layout_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-3, 2**65)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=3)
    | st.just([])
    | st.just({})
)


@SETTINGS
@given(bundles(), st.data())
def test_fast_layout_check_never_accepts_what_the_reference_rejects(
    parts: tuple[Any, Any, Any], data: st.DataObject
) -> None:
    from inferoscope.validation.layout_struct import layout_conforms

    assert layout_conforms(json.loads(json.dumps(parts[2])))
    layout = copy.deepcopy(parts[2])
    for _ in range(data.draw(st.integers(0, 2))):
        path = data.draw(st.sampled_from([p for p in _paths(layout) if p]))
        if data.draw(st.booleans()):
            _set(layout, path, data.draw(layout_leaf))
        elif isinstance(_get(layout, path[:-1]), dict):
            del _get(layout, path[:-1])[path[-1]]
    layout = json.loads(json.dumps(layout))
    assert not layout_conforms(layout) or is_schema_valid(layout, "layout")
