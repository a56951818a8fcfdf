"""The writer: byte format of the original, validation before anything is visible, atomic rename."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inferoscope import RunBundleError, RunIdError, load_run_bundle, write_run_bundle
from inferoscope.bundle import writer as writer_module
from inferoscope.extraction import MoELayerCaptureInput, PyTorchRunBundleRecorder

from .conftest import DATA, VALID, make_bundle_parts


def _rebuild_fixture_b(root: Path) -> Path:
    """Bundle b from tests/fixtures/upstream/README's recipe, through our recorder and writer."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((64, 16, 64))
    token_ids = rng.integers(0, 50280, size=64)
    recorder = PyTorchRunBundleRecorder(
        run_id="olmoe-64tok-seed7",
        created_at="2026-03-24T12:00:00Z",
        model_id="allenai/OLMoE-1B-7B-0125",
        tokenizer_id="allenai/OLMoE-1B-7B-0125",
        prompt_text="The quick brown fox",
        seed=7,
        derivation_version="motifs/v0.1.0-alpha",
        derivation_config_id="motifs/default-alpha",
        generation_config={"max_new_tokens": 64, "do_sample": False},
        capture_config={
            "trace_level": "full-router-probs",
            "logits_source": "numpy.default_rng(7).standard_normal",
        },
    )
    for t in range(64):
        start = 100.0 + 25 * t  # the recipe used float milliseconds (the bytes say 100.0)
        recorder.record_generated_token(
            token_id=int(token_ids[t]),
            token_text=f" tok{t}",
            context_length=12 + t,
            decode_start_ms=start,
            decode_end_ms=start + 12.5 + 0.25 * (t % 4),
            layer_inputs=[MoELayerCaptureInput(layer, logits[t, layer].tolist(), 8) for layer in range(16)],
        )
    return recorder.write_bundle(root)


def test_rebuilt_bundle_is_byte_identical_to_the_original_librarys(tmp_path: Path) -> None:
    ours = _rebuild_fixture_b(tmp_path)
    original = VALID / "b_olmoe_64tok_16x64_top8"
    for name in ("manifest.json", "raw_trace.ndjson", "layout.json"):
        assert (ours / name).read_bytes() == (original / name).read_bytes(), name
    assert sorted(p.name for p in ours.iterdir()) == ["layout.json", "manifest.json", "raw_trace.ndjson"]


@pytest.mark.parametrize(
    ("script", "expected"),
    [("readme_example_build.py", ["demo-run", "[0, 1]"]), ("readme_example_recorder.py", ["0", "[0, 1]"])],
)
def test_original_readme_examples_run_unchanged(script: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(DATA / script)], capture_output=True, text=True, check=True, timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines[-len(expected) :][1:] == expected[1:]
    assert lines[-len(expected)].endswith(expected[0])


def test_existing_target_is_refused_and_left_untouched(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts()
    target = write_run_bundle(tmp_path, manifest, events, layout)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(FileExistsError):
        write_run_bundle(tmp_path, manifest, events[:1], layout)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


@pytest.mark.parametrize(
    "run_id", ["../evil", "/abs", "//srv/x", "C:x", "a:b", "a//b", "a/./b", "a/..", "a\\b", ""]
)
def test_run_id_that_would_escape_the_root_is_refused(tmp_path: Path, run_id: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    manifest, events, layout = make_bundle_parts(run_id="x")
    manifest["run_id"] = run_id
    with pytest.raises(RunIdError):
        write_run_bundle(root, manifest, events, layout)
    assert list(root.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_run_id_through_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    manifest, events, layout = make_bundle_parts(run_id="link/run")
    with pytest.raises(RunIdError):
        write_run_bundle(root, manifest, events, layout)
    assert list(outside.iterdir()) == []


def test_nested_unicode_run_id_makes_nested_directories(tmp_path: Path) -> None:
    run_id = "team/exp 1/ünï 🚀.v2"
    manifest, events, layout = make_bundle_parts(run_id=run_id)
    target = write_run_bundle(tmp_path, manifest, events, layout)
    assert target == tmp_path / "team" / "exp 1" / "ünï 🚀.v2"
    assert load_run_bundle(target)["manifest"]["run_id"] == run_id


def test_invalid_bundle_is_refused_with_every_code_and_nothing_is_left(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(run_id="deep/nested/run")
    events[1]["layers"][0]["topk_probs"][0] += 0.25
    events[2]["timing_ms"]["decode_duration"] = 99.0
    with pytest.raises(RunBundleError) as caught:
        write_run_bundle(tmp_path, manifest, events, layout)
    assert "topk_prob_mismatch" in str(caught.value)
    assert "decode_duration_mismatch" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_nan_is_refused_on_write_and_nothing_is_left(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts()
    events[0]["layers"][1]["entropy"] = float("nan")
    with pytest.raises(RunBundleError, match="NaN"):
        write_run_bundle(tmp_path, manifest, events, layout)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_mid_write_removes_the_staging_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, events, layout = make_bundle_parts()

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module, "_write_ndjson", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_run_bundle(tmp_path, manifest, events, layout)
    assert list(tmp_path.iterdir()) == []


def test_written_files_use_the_contract_byte_format(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(token_texts=["é", "\u2028", "\x1b[2J", "tab\t"])
    target = write_run_bundle(tmp_path, manifest, events, layout)
    raw = (target / "raw_trace.ndjson").read_bytes()
    assert raw.isascii() and raw.endswith(b"\n") and raw.count(b"\n") == 4
    assert raw.splitlines()[0] == json.dumps(events[0], sort_keys=True).encode()
    text = (target / "manifest.json").read_text()
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


def test_empty_run_writes_an_empty_raw_trace(tmp_path: Path) -> None:
    manifest, _events, layout = make_bundle_parts()
    target = write_run_bundle(tmp_path, manifest, [], layout)
    assert (target / "raw_trace.ndjson").read_bytes() == b""
    assert load_run_bundle(target)["raw_events"] == []


def test_leftovers_of_killed_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import time

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # a process that has exited
    manifest, events, layout = make_bundle_parts(run_id="r")
    stale = tmp_path / f".r.staging-{dead_pid}-abc"
    live = tmp_path / f".r.staging-{os.getpid()}-def"
    fresh_dead = tmp_path / f".r.staging-{dead_pid}-ghi"
    for folder in (stale, live, fresh_dead):
        folder.mkdir()
        (folder / "raw_trace.ndjson").write_text("{}\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    write_run_bundle(tmp_path, manifest, events, layout)
    assert not stale.exists()  # killed an hour ago: removed
    assert live.exists() and fresh_dead.exists()  # a live writer, or a just-killed one: kept


def test_a_writer_losing_the_race_gets_file_exists_not_an_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from inferoscope.bundle import writer

    def rename(src: object, dst: object) -> None:
        raise OSError(errno.ENOTEMPTY, "Directory not empty")

    monkeypatch.setattr(writer.os, "rename", rename)
    with pytest.raises(FileExistsError):
        write_run_bundle(tmp_path, *make_bundle_parts())
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    monkeypatch.undo()
    assert os.rename  # restored
