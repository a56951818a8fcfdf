"""Parquet export, queried with DuckDB as a person analysing many runs would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from inferoscope import RunReader
from inferoscope.export import export_parquet

from .conftest import INVALID, VALID

B = VALID / "b_olmoe_64tok_16x64_top8"


def test_export_has_one_row_per_token_and_layer_and_duckdb_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "b.parquet"
    assert export_parquet(B, out).rows == 64 * 16
    assert str(pq.read_schema(out).field("router_probs").type) == "fixed_size_list<element: double>[64]"
    con = duckdb.connect()
    rows = con.execute(
        f"select count(*), count(distinct token_index), count(distinct layer_index), "
        f"min(len(router_probs)), max(len(router_probs)) from '{out}'"
    ).fetchone()
    assert rows == (1024, 64, 16, 64, 64)
    top1 = con.execute(
        f"select top1_expert, count(*) from '{out}' where layer_index = 3 group by 1"
    ).fetchall()
    load = RunReader(B).validate().aggregates.layers[3].top1_load
    assert {int(e): int(c) for e, c in top1} == {int(e): int(c) for e, c in enumerate(load) if c}
    sums = np.array(con.execute(f"select list_sum(router_probs) from '{out}'").fetchall())[:, 0]
    assert np.allclose(sums, 1.0, atol=1e-6)


def test_export_refuses_to_overwrite_and_leaves_nothing_partial(tmp_path: Path) -> None:
    out = tmp_path / "b.parquet"
    out.write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "inferoscope", "export", str(B), "--parquet", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and out.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.parquet"]


def test_a_bundle_with_issues_is_refused_unless_forced(tmp_path: Path) -> None:
    bad = INVALID / "decode_duration_mismatch"
    out = tmp_path / "bad.parquet"
    refused = subprocess.run(
        [sys.executable, "-m", "inferoscope", "export", str(bad), "--parquet", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "decode_duration_mismatch" in refused.stderr and not out.exists()
    forced = subprocess.run(
        [sys.executable, "-m", "inferoscope", "export", str(bad), "--parquet", str(out), "--force"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert forced.returncode == 0 and "wrote" in forced.stdout and out.exists()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_force_exports_what_is_readable_and_says_what_was_skipped(tmp_path: Path) -> None:
    import json

    from .conftest import make_bundle_parts, write_raw_bundle

    manifest, events, layout = make_bundle_parts(tokens=5, layers=2)
    events[1]["token_id"] = int("7" * 4000)  # schema-valid: any integer
    events[2]["layers"][0]["topk_indices"] = 3
    events[3]["layers"][1]["entropy"] = "x"
    lines = [json.dumps(e, sort_keys=True) for e in events]
    lines[4] = "{ cut off"
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=lines)
    refused = run("inferoscope", "export", str(folder), "--parquet", str(tmp_path / "x.parquet"))
    assert refused.returncode == 1 and "--force" in refused.stderr
    done = run("inferoscope", "export", str(folder), "--parquet", str(tmp_path / "x.parquet"), "--force")
    assert done.returncode == 0, done.stderr
    assert "wrote 6 rows" in done.stdout and "skipped 1 event(s) and 2 layer row(s)" in done.stdout
    table = pq.read_table(tmp_path / "x.parquet").to_pydict()
    assert table["token_id_text"][2] == "7" * 4000 and table["token_id"][2] is None
    assert sorted(set(table["token_index"])) == [0, 1, 2, 3]


def test_reading_by_blocks_writes_the_same_file_as_event_by_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes decode blocks of the raw trace; odd events (unreadable, another shape, a
    value past its column) go the careful way: the Parquet file is byte for byte the same."""
    import hashlib
    import json

    import inferoscope.export as export_module
    from inferoscope.bundle import blocks

    from .conftest import make_bundle_parts, write_raw_bundle

    monkeypatch.setattr(blocks, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(export_module, "ROWS_PER_GROUP", 50)  # several row groups, cut mid-block
    manifest, events, layout = make_bundle_parts(tokens=80, layers=3, experts=8)
    lines = [json.dumps(e, sort_keys=True) for e in events]
    lines[5] = "{not json"
    events[11]["layers"][1]["router_probs"] = events[11]["layers"][1]["router_probs"][:5]
    events[23]["token_id"] = 2**70  # past int64: null token_id, its digits kept
    events[31]["layers"][2]["topk_indices"][0] = 2**40  # past the int32 column: that row skipped
    for t in (11, 23, 31):
        lines[t] = json.dumps(events[t], sort_keys=True)
    run = write_raw_bundle(tmp_path / "run", manifest, events, layout, lines)
    digests, results = [], []
    for by_blocks in (True, False):
        monkeypatch.setattr(export_module, "READ_BY_BLOCKS", by_blocks)
        out = tmp_path / f"{by_blocks}.parquet"
        result = export_parquet(run, out)
        results.append((result.rows, result.skipped_events, result.skipped_layers, dict(result.reasons)))
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1] and results[0] == results[1]
    assert results[0][1] == 1 and results[0][2] >= 2  # the unreadable event; the odd layers
    assert pq.ParquetFile(tmp_path / "True.parquet").metadata.num_row_groups > 3


def test_a_full_disk_names_the_export_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills while the Parquet is written: the error names the file the user asked
    for (the writer's own errors name none, or the partial file, which is removed)."""
    import errno

    from inferoscope.arrays import drop_behind
    from inferoscope.synthetic import write_synthetic_v02

    run = write_synthetic_v02(tmp_path / "runs", "full-disk", 300, layers=2, experts=8, top_k=2, seed=3)
    written = drop_behind.DropBehindFile.write

    def fills(self: drop_behind.DropBehindFile, data: bytes) -> int:
        if self.tell() > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return written(self, data)

    monkeypatch.setattr(drop_behind.DropBehindFile, "write", fills)
    target = tmp_path / "out" / "run.parquet"
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device"):
        export_parquet(run, target)
    assert list((tmp_path / "out").iterdir()) == []
