"""Code written against the original library's Python API runs unchanged and behaves the same."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inferoscope
from inferoscope import RunBundleError
from inferoscope.extraction import (
    MoELayerCaptureInput,
    PyTorchMoELayerCaptureInput,
    PyTorchRunBundleRecorder,
    build_layer_grid_layout,
    build_manifest,
    build_moe_layer_trace,
    build_olmoe_layer_inputs,
    build_token_complete_event,
    build_token_complete_event_from_pytorch,
    load_run_bundle,
    record_olmoe_generated_token,
    write_run_bundle,
)
from inferoscope.validation import (
    ValidationIssue,
    validate_artifact_schema,
    validate_layout_semantics,
    validate_manifest_semantics,
    validate_raw_event_semantics,
    validate_run_bundle_schema,
    validate_run_bundle_schema_issues,
    validate_run_bundle_semantics,
)

from .conftest import INVALID, VALID, make_bundle_parts, write_raw_bundle

ORIGINAL_NAMES = {
    "inferoscope.extraction.bundle": ["build_manifest", "build_layer_grid_layout"],
    "inferoscope.extraction.raw_trace": [
        "MoELayerCaptureInput",
        "build_moe_layer_trace",
        "build_token_complete_event",
    ],
    "inferoscope.extraction.pytorch": [
        "PyTorchMoELayerCaptureInput",
        "build_token_complete_event_from_pytorch",
    ],
    "inferoscope.extraction.pytorch_recorder": ["PyTorchRunBundleRecorder"],
    "inferoscope.extraction.olmoe": ["build_olmoe_layer_inputs", "record_olmoe_generated_token"],
    "inferoscope.extraction.run_bundle_io": ["write_run_bundle", "load_run_bundle"],
    "inferoscope.validation.semantic": [
        "ValidationIssue",
        "validate_raw_event_semantics",
        "validate_manifest_semantics",
        "validate_layout_semantics",
        "validate_run_bundle_semantics",
    ],
    "inferoscope.validation.schema": ["validate_artifact_schema", "validate_run_bundle_schema"],
    "inferoscope.formats": ["is_rfc3339_datetime"],
    "inferoscope.run_ids": ["run_id_path"],
    "inferoscope.inspect": ["build_summary", "build_summary_lines", "main"],
    "inferoscope.extraction": [
        "PyTorchMoELayerCaptureInput",
        "build_olmoe_layer_inputs",
        "build_token_complete_event_from_pytorch",
    ],
    "inferoscope.validation": [
        "validate_artifact_schema",
        "validate_raw_event_semantics",
        "validate_layout_semantics",
        "validate_manifest_semantics",
    ],
}


def _manifest(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "run_id": "run-001",
        "created_at": "2026-03-22T12:00:00Z",
        "model_id": "allenai/OLMoE-1B-7B-0125",
        "tokenizer_id": "allenai/OLMoE-1B-7B-0125",
        "prompt_text": "hello",
        "derivation_version": "motifs/v0.1.0-alpha",
        "derivation_config_id": "motifs/default-alpha",
    }
    fields.update(overrides)
    return build_manifest(**fields)


def _event(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "run_id": "run-001",
        "token_index": 0,
        "token_id": 42,
        "token_text": " world",
        "context_length": 5,
        "decode_start_ms": 10,
        "decode_end_ms": 25,
        "layer_inputs": [MoELayerCaptureInput(0, [2.0, 1.0, 0.0, -1.0], 2)],
    }
    fields.update(overrides)
    return build_token_complete_event(**fields)


def _recorder(**overrides: Any) -> PyTorchRunBundleRecorder:
    fields: dict[str, Any] = {
        "run_id": "run-001",
        "created_at": "2026-03-22T12:00:00Z",
        "model_id": "m",
        "tokenizer_id": "t",
        "prompt_text": "p",
        "derivation_version": "motifs/v0.1.0-alpha",
        "derivation_config_id": "motifs/default-alpha",
    }
    fields.update(overrides)
    return PyTorchRunBundleRecorder(**fields)


def _record(recorder: PyTorchRunBundleRecorder, logits: Any = (2.0, 1.0, 0.0, -1.0)) -> dict[str, Any]:
    return recorder.record_generated_token(
        token_id=1,
        token_text="x",
        context_length=3,
        decode_start_ms=0,
        decode_end_ms=1,
        layer_inputs=[MoELayerCaptureInput(0, list(logits), 2)],
    )


# -- 1. import paths and names -------------------------------------------------------------------
@pytest.mark.parametrize("module", sorted(ORIGINAL_NAMES))
def test_every_original_import_path_and_name_exists(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in ORIGINAL_NAMES[module]:
        assert callable(getattr(loaded, name)), f"{module}.{name}"


def test_the_original_paths_are_the_same_objects_not_copies() -> None:
    from inferoscope.extraction import olmoe, pytorch, raw_trace, run_bundle_io

    assert raw_trace.build_token_complete_event is build_token_complete_event
    assert pytorch.build_token_complete_event_from_pytorch is build_token_complete_event
    assert PyTorchMoELayerCaptureInput is MoELayerCaptureInput
    assert olmoe.record_olmoe_generated_token is record_olmoe_generated_token
    assert run_bundle_io.load_run_bundle is inferoscope.load_run_bundle


def test_derive_bundle_artifacts_returns_a_dict_of_exact_motifs_that_can_be_written(tmp_path: Path) -> None:
    recorder = _recorder()
    for logits in ([2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, -1.0], [2.0, 1.0, 0.0, -1.0]):
        _record(recorder, logits)
    bundle = load_run_bundle(recorder.write_bundle(tmp_path / "a"))
    artifacts = inferoscope.derive_bundle_artifacts(bundle)
    assert sorted(artifacts) == ["contingency", "derived_events", "motif_ledger"]
    motifs = [e["derived_payload"]["global_motif"]["motif_id"] for e in artifacts["derived_events"]]
    assert motifs[0] == motifs[2] != motifs[1]  # exact fingerprints: equal routing, same motif
    assert artifacts["motif_ledger"]["derivation_config_id"] == bundle["manifest"]["derivation_config_id"]
    assert artifacts["motif_ledger"]["ledger_payload"]["matching_rule"] == "motifs/exact-fingerprint"
    run_dir = write_run_bundle(
        tmp_path / "b", bundle["manifest"], bundle["raw_events"], bundle["layout"], **artifacts
    )
    assert len(load_run_bundle(run_dir)["derived_events"]) == 3


# -- 2. signatures ----------------------------------------------------------------------------------
def test_root_dir_keyword_and_positional_layer_trace(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts()
    assert write_run_bundle(
        root_dir=tmp_path / "x", manifest=manifest, raw_events=events, layout=layout
    ).is_dir()
    recorder = _recorder()
    _record(recorder)
    assert recorder.write_bundle(root_dir=tmp_path / "y").is_dir()
    assert recorder.write_bundle(root=tmp_path / "z").is_dir()
    layer = build_moe_layer_trace(3, [1.0, 0.0], num_active_experts=1)
    assert layer["layer_index"] == 3 and layer["topk_indices"] == [0]


# -- 3. builders check their inputs ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: _manifest(run_id=""), "run_id"),
        (lambda: _manifest(run_id="a\\b"), "backslashes"),
        (lambda: _manifest(created_at="2026-03-22 12:00:00"), "created_at"),
        (lambda: _manifest(model_id=""), "model_id"),
        (lambda: _event(run_id=""), "run_id"),
        (lambda: _event(token_index=-1), "token_index"),
        (lambda: _event(context_length=-1), "context_length"),
        (lambda: _event(decode_start_ms=5, decode_end_ms=4), "decode_end_ms"),
        (lambda: _event(decode_end_ms=math.inf), "finite"),
        (lambda: _event(layer_inputs=[]), "layer_inputs"),
        (lambda: _event(layer_inputs=[MoELayerCaptureInput(1, [0.0, 1.0], 1)] * 2), "duplicate"),
        (lambda: _event(layer_inputs=[MoELayerCaptureInput(-1, [0.0, 1.0], 1)]), "layer_index"),
        (lambda: build_moe_layer_trace(0, [0.0, 1.0], num_active_experts=0), "num_active_experts"),
        (lambda: build_moe_layer_trace(0, [0.0, 1.0], num_active_experts=3), "num_active_experts"),
        (lambda: build_moe_layer_trace(0, [], num_active_experts=1), "empty"),
        (
            lambda: build_layer_grid_layout(run_id="r", layout_id="g", layer_expert_counts=[(0, 2), (0, 2)]),
            "dup",
        ),
        (
            lambda: build_layer_grid_layout(run_id="r", layout_id="g", layer_expert_counts=[(0, 0)]),
            "expert_count",
        ),
        (lambda: build_layer_grid_layout(run_id="r", layout_id="g", layer_expert_counts=[]), "empty"),
    ],
)
def test_builders_refuse_bad_input_with_a_value_error_naming_it(build: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build()


class TwoDimensional:
    """A tensor-like of shape [1, 4]: refused, never silently unwrapped."""

    def tolist(self) -> list[list[float]]:
        return [[1.0, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize(
    "logits", [42, "0123", b"01", ["oops", 1.0], [True, 1.0], TwoDimensional(), [[1.0, 2.0]]]
)
def test_logits_that_are_not_one_row_of_numbers_are_a_type_error(logits: Any) -> None:
    with pytest.raises(TypeError):
        build_moe_layer_trace(0, logits, num_active_experts=1)


def test_a_two_dimensional_tensor_is_also_the_value_error_the_original_raised() -> None:
    with pytest.raises(ValueError, match="1D"):
        build_token_complete_event_from_pytorch(
            run_id="r",
            token_index=0,
            token_id=1,
            token_text="x",
            context_length=1,
            decode_start_ms=0.0,
            decode_end_ms=1.0,
            layer_inputs=[PyTorchMoELayerCaptureInput(0, TwoDimensional(), 1)],
        )


def test_numpy_scalars_and_arrays_are_logits_and_layers_come_out_sorted() -> None:
    as_list = [np.float32(2.0), np.float64(1.0), np.int64(0), -1.0]
    as_array = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    event = _event(
        layer_inputs=[MoELayerCaptureInput(5, as_array, 2), MoELayerCaptureInput(np.int64(2), as_list, 2)]
    )
    assert [layer["layer_index"] for layer in event["layers"]] == [2, 5]
    assert event["layers"][0]["router_probs"] == event["layers"][1]["router_probs"]
    json.dumps(event)  # plain Python numbers only


def test_integer_milliseconds_stay_integers_as_in_the_original() -> None:
    event = _event(decode_start_ms=10, decode_end_ms=25)
    assert event["timing_ms"] == {"decode_start": 10, "decode_end": 25, "decode_duration": 15}
    assert all(type(v) is int for v in event["timing_ms"].values())
    assert _event(decode_start_ms=10.0, decode_end_ms=25)["timing_ms"]["decode_duration"] == 15.0


# -- 4. recorder ------------------------------------------------------------------------------------
def test_recorder_hands_out_copies_and_copies_what_it_is_given(tmp_path: Path) -> None:
    config = {"nested": {"a": 1}}
    recorder = _recorder(capture_config=config)
    config["nested"]["a"] = 2
    returned = _record(recorder)
    returned["token_text"] = "changed"
    recorder.manifest["run_id"] = "changed"
    recorder.raw_events[0]["token_id"] = -5
    assert recorder.manifest["capture_config"] == {"nested": {"a": 1}}
    assert recorder.manifest["run_id"] == "run-001"
    assert recorder.raw_events[0]["token_text"] == "x" and recorder.raw_events[0]["token_id"] == 1
    assert load_run_bundle(recorder.write_bundle(tmp_path))["raw_events"][0]["token_text"] == "x"


def test_a_layer_changing_its_expert_count_is_refused_at_record_time(tmp_path: Path) -> None:
    recorder = _recorder()
    _record(recorder)
    with pytest.raises(ValueError, match="num_total_experts"):
        _record(recorder, [1.0, 2.0, 3.0])
    assert len(recorder.raw_events) == 1
    _record(recorder)
    assert len(load_run_bundle(recorder.write_bundle(tmp_path))["raw_events"]) == 2


def test_record_generated_token_needs_contiguous_indices_from_zero() -> None:
    recorder = _recorder()
    recorder.record_token_complete(
        token_index=7,
        token_id=1,
        token_text="x",
        context_length=1,
        decode_start_ms=0,
        decode_end_ms=1,
        layer_inputs=[MoELayerCaptureInput(0, [1.0, 0.0], 1)],
    )
    with pytest.raises(ValueError, match="contiguous starting at 0"):
        _record(recorder)


@pytest.mark.parametrize(
    ("logits_by_layer", "error", "words"),
    [
        ({}, ValueError, "must not be empty"),
        ([[1.0, 0.0]], TypeError, "mapping"),
        ({"0": [1.0, 0.0]}, TypeError, "integer layer"),
        ({-1: [1.0, 0.0]}, ValueError, "non-negative"),
    ],
)
def test_record_olmoe_generated_token_names_what_is_wrong(
    logits_by_layer: Any, error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        record_olmoe_generated_token(
            _recorder(),
            token_id=1,
            token_text="x",
            context_length=1,
            decode_start_ms=0,
            decode_end_ms=1,
            router_logits_by_layer=logits_by_layer,
            num_active_experts=1,
        )


def test_record_olmoe_generated_token_needs_a_recorder_that_can_record() -> None:
    with pytest.raises(TypeError, match="recorder must implement record_generated_token"):
        record_olmoe_generated_token(
            object(),  # type: ignore[arg-type]
            token_id=1,
            token_text="x",
            context_length=1,
            decode_start_ms=0,
            decode_end_ms=1,
            router_logits_by_layer={0: [1.0, 0.0]},
            num_active_experts=1,
        )
    assert [
        i.layer_index
        for i in build_olmoe_layer_inputs(router_logits_by_layer={3: [0.0], 1: [0.0]}, num_active_experts=1)
    ] == [1, 3]


# -- 5. validation API ------------------------------------------------------------------------------
def test_schema_validation_returns_the_original_strings_and_offers_located_issues() -> None:
    manifest, events, layout = make_bundle_parts()
    manifest["seed"] = True
    layout["layout_id"] = ""
    texts = validate_run_bundle_schema(manifest, events, layout)
    assert texts == [
        "manifest.seed must have schema type ['integer', 'null']",
        "layout.layout_id must have length >= 1",
    ]
    located = validate_run_bundle_schema_issues(manifest, events, layout)
    assert [i.message for i in located] == texts
    assert located[0].location.file == "manifest.json" and located[0].location.json_path == "$.seed"
    assert validate_artifact_schema("layout", layout) == ["layout.layout_id must have length >= 1"]
    with pytest.raises(ValueError, match="unsupported artifact schema"):
        validate_artifact_schema("unknown", {})


def test_issues_compare_equal_on_scope_code_and_message_only() -> None:
    plain = ValidationIssue(scope="manifest", code="run_id_path_invalid", message="m")
    located = ValidationIssue("manifest", "run_id_path_invalid", "m", "warning", detail="run_id is '../x'")
    assert plain == located and hash(plain) == hash(located)
    assert validate_manifest_semantics(_manifest() | {"run_id": "../evil"}) == [
        ValidationIssue(
            scope="manifest",
            code="run_id_path_invalid",
            message="manifest run_id must be a canonical relative path with non-empty segments.",
        )
    ]


def test_per_artifact_semantic_validators() -> None:
    event = _event()
    assert validate_raw_event_semantics(event) == []
    event["layers"][0]["router_probs"] = event["layers"][0]["router_probs"][:3]
    issues = validate_raw_event_semantics(event)
    assert (
        ValidationIssue(
            "raw_event.layer[0]",
            "router_probs_length_mismatch",
            "router_probs length must equal num_total_experts.",
        )
        in issues
    )
    assert all(i.location.line is None and i.location.token_index == 0 for i in issues)
    layout = build_layer_grid_layout(run_id="r", layout_id="g", layer_expert_counts=[(0, 2)])
    layout["layers"].append(layout["layers"][0])
    assert [i.code for i in validate_layout_semantics(layout)] == ["duplicate_layer_index"]


@pytest.mark.parametrize("name", sorted(p.name for p in INVALID.iterdir()))
def test_semantic_issues_equal_the_original_librarys(name: str) -> None:
    expected = json.loads((INVALID / name / "expected.json").read_text())
    if not expected["semantic_issues"]:
        return
    bundle = {}
    for key, file in (("manifest", "manifest.json"), ("layout", "layout.json")):
        bundle[key] = json.loads((INVALID / name / file).read_text())
    raw = (INVALID / name / "raw_trace.ndjson").read_text().splitlines()
    derived_path = INVALID / name / "derived.ndjson"
    derived = (
        [json.loads(x) for x in derived_path.read_text().splitlines()] if derived_path.exists() else None
    )
    issues = validate_run_bundle_semantics(
        bundle["manifest"], [json.loads(x) for x in raw], bundle["layout"], derived_events=derived
    )
    wanted = [ValidationIssue(i["scope"], i["code"], i["message"]) for i in expected["semantic_issues"]]
    assert sorted(issues, key=repr) == sorted(wanted, key=repr)


def test_load_gives_none_for_absent_optional_artifacts() -> None:
    bundle = load_run_bundle(VALID / "a_readme_demo")
    assert bundle["derived_events"] is None and bundle["motif_ledger"] is None


# -- 6. errors of the original's types --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in INVALID.iterdir()))
def test_load_raises_the_original_type_with_the_original_first_words(name: str) -> None:
    expected = json.loads((INVALID / name / "expected.json").read_text())
    types = {
        "ValueError": ValueError,
        "JSONDecodeError": json.JSONDecodeError,
        "FileNotFoundError": FileNotFoundError,
    }
    with pytest.raises(types[expected["upstream_load_raises"]]) as caught:
        load_run_bundle(INVALID / name)
    assert isinstance(caught.value, RunBundleError) and caught.value.issues
    original = expected["load_error_message"]
    if original.startswith("run bundle failed"):
        assert str(caught.value).startswith(original.split(":")[0])
    if expected["codes"] == ["run_id_path_invalid"]:
        assert original in str(caught.value)


def test_a_missing_folder_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json") as caught:
        load_run_bundle(tmp_path / "nothing")
    assert caught.value.errno == 2 and caught.value.filename == str(tmp_path / "nothing" / "manifest.json")
    result = _inspect(str(tmp_path / "nothing"))
    assert result.returncode == 1 and result.stderr.startswith("[Errno 2] No such file or directory: ")


def test_write_refusals_have_the_original_types(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts()
    with pytest.raises(TypeError) as not_json:
        write_run_bundle(tmp_path, manifest | {"seed": object()}, events, layout)
    assert isinstance(not_json.value, RunBundleError)
    with pytest.raises(ValueError, match="non-standard JSON numeric values"):
        write_run_bundle(tmp_path, manifest | {"generation_config": {"t": math.nan}}, events, layout)
    with pytest.raises(ValueError, match=r"^run bundle failed schema validation") as schema:
        write_run_bundle(tmp_path, manifest | {"seed": "x"}, events, layout)
    assert "manifest.seed" in str(schema.value)
    events[1]["run_id"] = "other"
    with pytest.raises(ValueError, match=r"^run bundle failed semantic validation.*run_id_mismatch"):
        write_run_bundle(tmp_path, manifest, events, layout)
    assert list(tmp_path.iterdir()) == []


# -- 7. python -m inferoscope.inspect -------------------------------------------------------------
def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferoscope.inspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_inspect_of_an_empty_run_lists_the_layouts_layers_and_no_duration() -> None:
    result = _inspect(str(VALID / "e_empty_raw_trace"))
    layout = json.loads((VALID / "e_empty_raw_trace" / "layout.json").read_text())
    assert result.returncode == 0
    assert "raw_events: 0" in result.stdout and f"layers: {len(layout['layers'])}" in result.stdout
    assert "decode_duration_ms" not in result.stdout
    data = json.loads(_inspect("--json", str(VALID / "e_empty_raw_trace")).stdout)
    assert data["layers"] == len(layout["layers"]) and data["decode_duration_ms"] is None


def test_inspect_failures_start_with_the_original_words_and_exit_1(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts()
    events[0]["run_id"] = "other"
    bad = write_raw_bundle(tmp_path / "bad", manifest, events, layout)
    result = _inspect(str(bad))
    assert result.returncode == 1 and result.stderr.startswith("run bundle failed semantic validation")
    assert "run_id_mismatch" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(SystemExit) as stopped:
        inferoscope.inspect.main([str(tmp_path / "missing")])
    assert stopped.value.code == 1


def test_build_summary_lines_of_a_loaded_bundle_match_the_command() -> None:
    from inferoscope.inspect import build_summary, build_summary_lines

    bundle = load_run_bundle(VALID / "b_olmoe_64tok_16x64_top8")
    assert build_summary(bundle) == json.loads(
        _inspect("--json", str(VALID / "b_olmoe_64tok_16x64_top8")).stdout
    )
    assert (
        "\n".join(build_summary_lines(bundle)) + "\n"
        == _inspect(str(VALID / "b_olmoe_64tok_16x64_top8")).stdout
    )
