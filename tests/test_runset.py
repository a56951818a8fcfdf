"""A folder of runs (what ``inferoscope route`` writes) is a run set: validate, inspect, export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .test_specialise import write_doc


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferoscope", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def run_set(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    for i in range(4):
        write_doc(tmp_path / "set", i, ("code", "prose")[i % 2], 10 + i, None, rng)
    return tmp_path / "set"


def test_inspect_lists_every_run_with_its_source_and_state(run_set: Path) -> None:
    result = cli("inspect", str(run_set), "--json")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert [r["source"] for r in runs] == ["code", "prose", "code", "prose"]
    assert all(r["ok"] and r["run_kind"] == "teacher_forced" for r in runs)
    text = cli("inspect", str(run_set))
    assert "4 runs, 46 tokens; by source: code 22, prose 24" in text.stdout


def test_validate_checks_every_run_and_names_the_broken_one(run_set: Path) -> None:
    (run_set / "doc-000002" / "arrays" / "moe.scores.npy").write_bytes(b"junk")
    result = cli("validate", str(run_set))
    assert result.returncode == 1
    assert "doc-000002: 1 issue(s)" in result.stdout and "doc-000001: clean" in result.stdout
    refused = cli("export", str(run_set), "--parquet", str(run_set.parent / "out"))
    assert refused.returncode == 1 and "1 run(s) of the set have issues" in refused.stderr


def test_export_writes_one_dataset_partitioned_by_source_and_run(run_set: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")
    out = run_set.parent / "dataset"
    result = cli("export", str(run_set), "--parquet", str(out))
    assert result.returncode == 0, result.stderr
    rows = duckdb.sql(
        f"select source, count(distinct run) as runs, count(*) as n from read_parquet('{out}/**/*.parquet', "
        "hive_partitioning=true) group by source order by source"
    ).fetchall()
    assert rows == [("code", 2, (10 + 12) * 2), ("prose", 2, (11 + 13) * 2)]  # tokens x 2 layers
