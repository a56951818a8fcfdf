"""Export checks the bundle in the pass that writes it: the same file as ever, the same issues
as ``validate``, and nothing written when the bundle is not clean."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import inferoscope.export as export_module
from inferoscope import RunReader
from inferoscope.bundle import blocks
from inferoscope.bundle.errors import RunBundleError
from inferoscope.cli import EXAMPLE_RUN
from inferoscope.export import export_parquet

pytest.importorskip("pyarrow")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many blocks and row groups cut mid-block, so the order of every merge matters."""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 20_000)
    monkeypatch.setattr(export_module, "ROWS_PER_GROUP", 300)


def test_checking_while_exporting_writes_the_file_event_by_event_export_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None
) -> None:
    checked = export_parquet(EXAMPLE_RUN, tmp_path / "checked.parquet", validate=True)
    monkeypatch.setattr(export_module, "READ_BY_BLOCKS", False)
    plain = export_parquet(EXAMPLE_RUN, tmp_path / "plain.parquet")
    assert _digest(tmp_path / "checked.parquet") == _digest(tmp_path / "plain.parquet")
    assert checked.rows == plain.rows == 800


def _broken_copy(tmp_path: Path) -> Path:
    run = tmp_path / "demo-run"
    shutil.copytree(EXAMPLE_RUN, run)
    lines = (run / "raw_trace.ndjson").read_text().splitlines()
    lines[3] = "{not json"
    late = json.loads(lines[150])
    late["layers"][2]["router_probs"][0] = 1.5  # past a probability, far into the run
    lines[150] = json.dumps(late, sort_keys=True)
    dup = json.loads(lines[90])
    dup["token_index"] = 89  # repeats the previous token's index
    lines[90] = json.dumps(dup, sort_keys=True)
    (run / "raw_trace.ndjson").write_text("\n".join(lines) + "\n")
    return run


def test_a_bundle_that_is_not_clean_gets_the_issues_validate_finds_and_no_file(
    tmp_path: Path, small_blocks: None
) -> None:
    run = _broken_copy(tmp_path)
    expected = RunReader(run).validate()
    assert not expected.ok
    target = tmp_path / "out" / "run.parquet"
    with pytest.raises(RunBundleError) as raised:
        export_parquet(run, target, validate=True)
    assert [i.describe() for i in raised.value.issues] == [i.describe() for i in expected.issues]
    assert raised.value.counts == expected.counts_by_code()
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_export_cli_refuses_a_broken_bundle_in_one_line_and_force_exports_it(tmp_path: Path) -> None:
    run = _broken_copy(tmp_path)
    target = tmp_path / "run.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "inferoscope", "export", str(run), "--parquet", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "contract issue(s)" in done.stderr and "--force" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["demo-run"]
    forced = subprocess.run(
        [sys.executable, "-m", "inferoscope", "export", str(run), "--parquet", str(target), "--force"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert forced.returncode == 0 and target.exists() and "skipped 1 event" in forced.stdout


def test_a_schema_issue_in_the_second_half_of_a_parallel_pass_names_its_event_in_the_whole_run(
    tmp_path: Path,
) -> None:
    run = _broken_copy(tmp_path)
    one = RunReader(run)
    one.workers = 1
    two = RunReader(run)
    two.workers = 2  # the file is cut in two; the second half's events count from its start
    alone, split = one.validate(), two.validate()
    assert [i.describe() for i in split.issues] == [i.describe() for i in alone.issues]
    assert any("raw_events[150]" in i.message for i in split.issues)
