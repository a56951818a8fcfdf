"""Every contract §4 code fires where the problem is, on the streaming path and the in-memory API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inferoscope import RunReader
from inferoscope.validation import validate_run_bundle_semantics

from .conftest import make_bundle_parts, write_raw_bundle

Layer = dict[str, Any]


def _swap_top(layer: Layer) -> None:
    layer["topk_indices"].reverse()
    layer["topk_probs"].reverse()
    layer["top1_prob"] = layer["topk_probs"][0]
    layer["top1_top2_margin"] = layer["topk_probs"][0] - layer["topk_probs"][1]


def _pick_loser(layer: Layer) -> None:
    probs = layer["router_probs"]
    loser = min(range(len(probs)), key=probs.__getitem__)
    layer["topk_indices"][1] = loser
    layer["topk_probs"][1] = probs[loser]
    layer["top1_top2_margin"] = layer["topk_probs"][0] - probs[loser]


LAYER_MUTATIONS: dict[str, tuple[Callable[[Layer], None], int | None]] = {
    "router_probs_length_mismatch": (lambda la: la["router_probs"].append(0.0), None),
    "num_active_experts_must_be_positive": (lambda la: la.update(num_active_experts=0), None),
    "num_active_experts_exceeds_num_total_experts": (lambda la: la.update(num_active_experts=9), None),
    "topk_length_mismatch": (lambda la: la["topk_probs"].pop(), None),
    "duplicate_topk_index": (lambda la: la["topk_indices"].__setitem__(1, la["topk_indices"][0]), "top0"),
    "topk_index_out_of_bounds": (lambda la: la["topk_indices"].__setitem__(1, 8), None),
    "router_probs_sum_mismatch": (
        lambda la: la["router_probs"].__setitem__(7, la["router_probs"][7] / 2),
        None,
    ),
    "topk_prob_mismatch": (lambda la: la["topk_probs"].__setitem__(1, la["topk_probs"][1] * 0.9), "top1"),
    "topk_selection_mismatch": (_swap_top, None),
    "top1_prob_mismatch": (lambda la: la.update(top1_prob=la["top1_prob"] - 0.01), "top0"),
    "top1_top2_margin_mismatch": (lambda la: la.update(top1_top2_margin=la["top1_top2_margin"] + 0.01), None),
    "entropy_mismatch": (lambda la: la.update(entropy=la["entropy"] + 0.01), None),
    "normalized_entropy_mismatch": (
        lambda la: la.update(normalized_entropy=la["normalized_entropy"] / 2),
        None,
    ),
}


def _expert(layer: Layer, marker: int | str | None) -> int | None:
    if marker == "top0":
        return int(layer["topk_indices"][0])
    if marker == "top1":
        return int(layer["topk_indices"][1])
    return marker  # type: ignore[return-value]


def _both_paths(tmp_path: Path, manifest: Any, events: list[Any], layout: Any) -> list[list[Any]]:
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    streamed = RunReader(folder).validate().issues
    direct = validate_run_bundle_semantics(manifest, events, layout)
    return [streamed, direct]


@pytest.mark.parametrize("code", sorted(LAYER_MUTATIONS))
def test_layer_problem_is_reported_at_its_token_layer_and_expert(tmp_path: Path, code: str) -> None:
    manifest, events, layout = make_bundle_parts(tokens=4, layers=2, experts=8, top_k=2)
    mutate, marker = LAYER_MUTATIONS[code]
    layer = events[2]["layers"][1]
    expert = _expert(layer, marker)
    mutate(layer)
    for issues in _both_paths(tmp_path, manifest, events, layout):
        hits = [i for i in issues if i.code == code]
        assert hits, [i.describe() for i in issues]
        assert all(i.scope == "raw_event.layer[1]" for i in hits)
        assert all((i.location.token_index, i.location.layer_index) == (2, 1) for i in hits)
        if expert is not None:
            assert hits[0].location.expert_index == expert
        assert all(i.location.token_index == 2 for i in issues if i.code != "schema_violation")


def test_selecting_a_weaker_expert_is_a_selection_mismatch(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=2, experts=8, top_k=2)
    _pick_loser(events[1]["layers"][0])
    for issues in _both_paths(tmp_path, manifest, events, layout):
        assert [i.code for i in issues] == ["topk_selection_mismatch"]


def test_ties_may_come_in_any_order(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=1, experts=4, top_k=2)
    layer = events[0]["layers"][0]
    layer["router_probs"] = [0.25, 0.25, 0.25, 0.25]
    layer.update(
        topk_indices=[3, 1],
        topk_probs=[0.25, 0.25],
        top1_prob=0.25,
        top1_top2_margin=0.0,
        entropy=1.3862943611198906,
        normalized_entropy=1.0,
    )
    for issues in _both_paths(tmp_path, manifest, events, layout):
        assert issues == []


def test_both_top_k_length_problems_fire_for_one_layer(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=1, experts=8, top_k=2)
    events[0]["layers"][0]["topk_indices"].append(5)
    for issues in _both_paths(tmp_path, manifest, events, layout):
        assert [i.code for i in issues].count("topk_length_mismatch") == 2


def test_event_and_run_level_codes(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=5, layers=2, experts=4)
    events[0]["timing_ms"]["decode_duration"] += 1.0
    events[1]["layers"].append(dict(events[1]["layers"][0]))
    events[3]["token_index"] = 2
    events[4]["run_id"] = "other"
    events[4]["layers"][1]["num_total_experts"] = 5
    expected = {
        "decode_duration_mismatch": (1, 0),
        "duplicate_layer_index": (2, 1),
        "duplicate_raw_token_index": (4, 2),
        "raw_token_index_sequence_invalid": (4, 2),
        "run_id_mismatch": (5, 4),
        "raw_layer_expert_count_inconsistent": (5, 4),
    }
    for issues in _both_paths(tmp_path, manifest, events, layout):
        found = {i.code: (i.location.line, i.location.token_index) for i in issues}
        for code, where in expected.items():
            assert found.get(code) == where, (code, [i.describe() for i in issues])


def test_layout_codes(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=2, layers=3, experts=4)
    layout["layers"][0]["positions"][3]["expert_index"] = 7
    layout["layers"][1]["positions"].pop()
    layout["layers"].append({"layer_index": 2, "positions": layout["layers"][2]["positions"]})
    issues = _both_paths(tmp_path, manifest, events, layout)[0]
    codes = {(i.code, i.location.layer_index) for i in issues}
    assert ("layout_expert_index_set_mismatch", 0) in codes
    assert ("layout_expert_count_mismatch", 1) in codes
    assert ("duplicate_layer_index", 2) in codes


def test_a_layer_missing_from_the_layout_names_the_raw_line_that_uses_it(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=3, layers=1)
    events[1]["layers"][0]["layer_index"] = 1
    for issues in _both_paths(tmp_path, manifest, events, layout):
        [issue] = issues
        assert issue.code == "layout_expert_count_mismatch" and issue.location.layer_index == 1
        assert "raw_trace.ndjson line 2" in issue.describe()


def test_derived_artifacts_are_checked_against_manifest_and_raw(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=2)
    derived = [
        {
            "event_type": "token_derived",
            "schema_version": "derived/v0.1.0-provisional",
            "run_id": "test-run",
            "token_index": t,
            "derivation_version": v,
            "derivation_config_id": "motifs/default-alpha",
            "derived_payload": {},
        }
        for t, v in ((0, "motifs/v0.1.0-alpha"), (0, "motifs/v0.1.0-alpha"), (5, "other"))
    ]
    issues = validate_run_bundle_semantics(manifest, events, layout, derived)
    assert sorted(i.code for i in issues) == [
        "derivation_version_mismatch",
        "derived_token_index_missing_from_raw",
        "duplicate_derived_token_index",
    ]


def test_unknown_profile_is_refused() -> None:
    manifest, events, layout = make_bundle_parts(tokens=1)
    with pytest.raises(ValueError, match="contiguous_segment"):
        validate_run_bundle_semantics(manifest, events, layout, profile="contiguous_segment")
