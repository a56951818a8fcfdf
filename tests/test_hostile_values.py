"""Odd values in every field of every file give contract errors or located issues, never a crash.

Each example puts one odd value (null, a bool, huge and negative integers, a 401-digit integer,
text with ESC, empty and nested containers, 1,500-deep nesting, a lone surrogate, the smallest
and largest floats) into one field of one file of a valid bundle, then runs the reader, the
validator, the strict loader, inspect's rendering, compare and export over it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from inferoscope import BundleOpenError, EventReadError, RunBundleError, RunReader, load_run_bundle
from inferoscope.compare import compare_runs
from inferoscope.export import export_parquet
from inferoscope.render import inspect_view
from inferoscope.summary import RunSummary

from .conftest import VALID, make_bundle_parts

DEEP = "DEEP"  # placeholder replaced by 1,500 nested arrays in the file's text
SURROGATE = "SURROGATE"  # placeholder replaced by the JSON escape of a lone surrogate
ODD: list[Any] = [
    None,
    True,
    2**64,
    -(2**70),
    int("9" * 401),
    "\x1b[2J\x1b]52;c;SGk=\x07",
    [],
    {},
    [[[]]],
    DEEP,
    SURROGATE,
    5e-324,
    1.7e308,
    -1.7e308,
]
RAW_FIELDS = [
    ("event_type",),
    ("schema_version",),
    ("run_id",),
    ("token_index",),
    ("token_id",),
    ("token_text",),
    ("context_length",),
    ("timing_ms",),
    ("timing_ms", "decode_start"),
    ("timing_ms", "decode_duration"),
    ("layers",),
    ("layers", 0),
    ("layers", 0, "layer_index"),
    ("layers", 0, "layer_kind"),
    ("layers", 0, "num_total_experts"),
    ("layers", 0, "num_active_experts"),
    ("layers", 0, "router_probs"),
    ("layers", 0, "router_probs", 0),
    ("layers", 0, "topk_indices"),
    ("layers", 0, "topk_indices", 0),
    ("layers", 0, "topk_probs", 1),
    ("layers", 0, "entropy"),
    ("layers", 0, "normalized_entropy"),
    ("layers", 0, "top1_prob"),
    ("layers", 0, "top1_top2_margin"),
]
MANIFEST_FIELDS = [
    ("schema_version",),
    ("run_id",),
    ("created_at",),
    ("model_id",),
    ("prompt",),
    ("prompt", "text"),
    ("seed",),
    ("generation_config",),
    ("artifact_versions",),
    ("artifact_versions", "raw_event_schema_version"),
    ("derivation_config_id",),
]
LAYOUT_FIELDS = [
    ("layout_id",),
    ("layers",),
    ("layers", 0),
    ("layers", 0, "layer_index"),
    ("layers", 0, "positions"),
    ("layers", 0, "positions", 0),
    ("layers", 0, "positions", 0, "expert_index"),
    ("layers", 0, "positions", 0, "x"),
]
TARGETS = (
    [("raw", f) for f in RAW_FIELDS]
    + [("manifest", f) for f in MANIFEST_FIELDS]
    + [("layout", f) for f in LAYOUT_FIELDS]
)
SETTINGS = settings(
    max_examples=int(os.environ.get("INFEROSCOPE_HYPOTHESIS_EXAMPLES", "60")),
    derandomize=not os.environ.get("INFEROSCOPE_HYPOTHESIS_RANDOM"),  # CI is deterministic
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CONTRACT_ERRORS = (RunBundleError, BundleOpenError, EventReadError)


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _text(obj: Any, indent: int | None) -> str:
    text = json.dumps(obj, sort_keys=True, indent=indent)
    return text.replace(f'"{DEEP}"', "[" * 1500 + "]" * 1500).replace(f'"{SURROGATE}"', '"a\\ud800b"')


def _write(folder: Path, where: str, path: tuple[Any, ...], value: Any) -> Path:
    manifest, events, layout = make_bundle_parts(tokens=3, layers=2, experts=8)
    target = {"raw": events[1], "manifest": manifest, "layout": layout}[where]
    _set(target, path, value)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(_text(manifest, 2) + "\n")
    (folder / "layout.json").write_text(_text(layout, 2) + "\n")
    (folder / "raw_trace.ndjson").write_text("".join(_text(e, None) + "\n" for e in events))
    return folder


def _every_path_survives(folder: Path, tmp: Path) -> None:
    report = RunReader(folder).validate()
    for issue in report.issues:
        issue.describe()  # every issue can be described
    if report.ok:  # some odd values are valid where they are (any text in token_text, a huge token_id)
        load_run_bundle(folder)
    else:
        with pytest.raises(RunBundleError):
            load_run_bundle(folder)
    summary = RunSummary.of(RunReader(folder))
    console = Console(file=io.StringIO(), width=100, force_terminal=False)
    console.print(inspect_view(summary, __import__("rich.box").box.ASCII))
    assert "\x1b" not in console.file.getvalue()  # type: ignore[attr-defined]
    with contextlib.suppress(*CONTRACT_ERRORS):
        compare_runs(folder, VALID / "a_readme_demo")
    with contextlib.suppress(*CONTRACT_ERRORS):  # what --force exports: never an exception of its own
        export_parquet(folder, tmp / "out" / "x.parquet", overwrite=True)


@given(target=st.sampled_from(TARGETS), value=st.sampled_from(ODD))
@SETTINGS
def test_an_odd_value_anywhere_is_an_issue_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, target: tuple[str, tuple[Any, ...]], value: Any
) -> None:
    where, path = target
    if value is None and (where, path) == ("manifest", ("seed",)):
        return  # a null seed is valid
    tmp = tmp_path_factory.mktemp("odd")
    _every_path_survives(_write(tmp / "b", where, path, value), tmp)


@pytest.mark.parametrize("value", ODD)
@pytest.mark.parametrize(
    "target",
    [
        ("raw", ("layers", 0, "num_total_experts")),
        ("raw", ("layers", 0, "entropy")),
        ("raw", ("token_index",)),
        ("layout", ("layers", 0, "positions", 0, "expert_index")),
        ("layout", ("layout_id",)),
        ("manifest", ("prompt", "text")),
    ],
)
def test_each_odd_value_in_the_fields_that_crashed(
    tmp_path: Path, target: tuple[str, tuple[Any, ...]], value: Any
) -> None:
    where, path = target
    _every_path_survives(_write(tmp_path / "b", where, path, value), tmp_path)


def test_a_number_past_any_float_is_a_mismatch_not_a_pass(tmp_path: Path) -> None:
    folder = _write(tmp_path / "b", "raw", ("layers", 0, "entropy"), int("9" * 401))
    codes = RunReader(folder).validate().counts_by_code()
    assert "entropy_mismatch" in codes


def test_extreme_timings_are_a_mismatch_without_numpy_warnings(tmp_path: Path) -> None:
    import warnings

    manifest, events, layout = make_bundle_parts(tokens=3)
    events[1]["timing_ms"] = {"decode_start": -1.7e308, "decode_end": 1.7e308, "decode_duration": 1.7e308}
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "layout.json").write_text(json.dumps(layout))
    (folder / "raw_trace.ndjson").write_text("".join(json.dumps(e) + "\n" for e in events))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail the test
        report = RunReader(folder).validate()
    assert report.counts_by_code() == {"decode_duration_mismatch": 1}
