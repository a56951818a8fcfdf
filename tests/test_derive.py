"""Provisional motifs: valid derived artifacts, raw trace untouched, deterministic, honest controls."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inferoscope import RunReader, load_run_bundle
from inferoscope.cli import EXAMPLE_RUN
from inferoscope.derive import write_derived


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "demo-run"
    shutil.copytree(EXAMPLE_RUN, target)
    return target


def test_derive_writes_valid_artifacts_and_never_touches_the_raw_trace(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw, layout = (run / "raw_trace.ndjson").read_bytes(), (run / "layout.json").read_bytes()
    summary = write_derived(run, 0.8)
    assert RunReader(run).validate().ok
    assert (run / "raw_trace.ndjson").read_bytes() == raw and (run / "layout.json").read_bytes() == layout
    bundle = load_run_bundle(run)
    assert bundle["manifest"]["derivation_config_id"] == "motifs/online-cosine-0.80" == summary["matcher"]
    first = bundle["derived_events"][0]["derived_payload"]
    assert first["global_motif"] == {"motif_id": "g_000", "fit": 1.0, "novel": True}
    assert [m["motif_id"] for m in first["layer_motifs"]] == ["l00_000", "l01_000", "l02_000", "l03_000"]
    counts = bundle["motif_ledger"]["ledger_payload"]["global_motif_counts"]
    assert sum(counts.values()) == 200 and len(counts) == summary["global_motifs"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_rederiving_replaces_only_the_derived_files_and_is_deterministic(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    write_derived(run, None)
    assert (
        load_run_bundle(run)["motif_ledger"]["ledger_payload"]["matching_rule"] == "motifs/exact-fingerprint"
    )
    write_derived(run, 0.9)
    once = (run / "derived.ndjson").read_bytes()
    write_derived(run, 0.9)
    assert (run / "derived.ndjson").read_bytes() == once
    ledger = load_run_bundle(run)["motif_ledger"]["ledger_payload"]
    assert ledger["matching_rule"] == "motifs/online-cosine-0.90" and ledger["threshold"] == 0.9


def test_the_exact_matcher_sees_no_repeats_and_clustering_sees_some(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    assert write_derived(run, None)["global_motifs"] == 200
    online = write_derived(run, 0.8)
    assert online["global_motifs"] < 100 and 0 < online["mean_global_fit"] <= 1


def test_the_real_run_has_fewer_global_motifs_than_its_token_scramble(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "inferoscope", "derive", str(run), "--threshold", "0.8", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    real = json.loads(result.stdout)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferoscope",
            "derive",
            str(run),
            "--threshold",
            "0.8",
            "--scramble",
            "tokens",
            "--out",
            str(tmp_path / "null"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    scrambled = json.loads(result.stdout)
    assert "SCRAMBLED" in result.stderr and "SCRAMBLED" in scrambled["run_dir"]
    assert real["layer_motifs"] == scrambled["layer_motifs"]  # per-layer vectors are only reordered
    assert real["global_motifs"] < scrambled["global_motifs"]  # their combination across layers is structure


def test_the_ledger_names_every_founder_and_keeps_centroids_of_shared_motifs(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    write_derived(run, 0.9)
    bundle = load_run_bundle(run)
    payload = bundle["motif_ledger"]["ledger_payload"]
    events = bundle["raw_events"]
    derived = bundle["derived_events"]
    for scope in ("global", "layer"):
        counts, founders = payload[f"{scope}_motif_counts"], payload[f"{scope}_founders"]
        centroids = payload[f"{scope}_centroids"]
        assert set(founders) == set(counts)
        assert set(centroids) == {m for m, c in counts.items() if c > 1}
    for position, event in enumerate(derived):
        motif = event["derived_payload"]["global_motif"]
        if motif["novel"]:
            assert payload["global_founders"][motif["motif_id"]] == events[position]["token_index"]
    # a shared motif's centroid is the mean of its members' router_probs (layer 0)
    members: dict[str, list[list[float]]] = {}
    for position, event in enumerate(derived):
        layer0 = event["derived_payload"]["layer_motifs"][0]["motif_id"]
        members.setdefault(layer0, []).append(events[position]["layers"][0]["router_probs"])
    for motif, vectors in members.items():
        if len(vectors) > 1:
            expected = [round(float(v), 8) for v in np.mean(np.asarray(vectors), axis=0)]
            assert payload["layer_centroids"][motif] == pytest.approx(expected, abs=1e-8)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_derive_that_dies_before_the_swap_leaves_the_bundle_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inferoscope.derive as derive

    run = _copy(tmp_path)
    before = _files(run)

    def killed(staging: Path, folder: Path) -> None:
        raise KeyboardInterrupt  # as if the process were stopped between building and swapping

    monkeypatch.setattr(derive, "exchange", killed)
    with pytest.raises(KeyboardInterrupt):
        write_derived(run, 0.5)
    assert _files(run) == before and RunReader(run).validate().ok
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left beside it


def test_a_half_derived_bundle_is_repaired_by_deriving_again(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    lines = (run / "derived.ndjson").read_text().splitlines()
    half = [
        line.replace('"derivation_config_id": "', '"derivation_config_id": "older-') for line in lines[:50]
    ]
    (run / "derived.ndjson").write_text("\n".join(half + lines[50:]) + "\n")  # as a crash mid-way left it
    assert "derivation_config_mismatch" in RunReader(run).validate().counts_by_code()
    write_derived(run)
    assert RunReader(run).validate().ok


def test_a_second_derive_of_the_same_bundle_is_told_another_one_is_running(tmp_path: Path) -> None:
    import os

    from inferoscope.bundle.swap import LOCK_NAME, BundleBusyError

    run = _copy(tmp_path)
    (run / LOCK_NAME).write_text(f"{os.getpid()}\n")  # a live holder
    with pytest.raises(BundleBusyError, match=rf"pid {os.getpid()}"):
        write_derived(run)
    cli = subprocess.run(
        [sys.executable, "-m", "inferoscope", "derive", str(run)], capture_output=True, text=True, check=False
    )
    assert cli.returncode == 2 and "being written by another inferoscope process" in cli.stderr
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (run / LOCK_NAME).write_text(dead.stdout)  # a holder that died: its lock is taken over
    write_derived(run)
    assert RunReader(run).validate().ok and not (run / LOCK_NAME).exists()


def test_derive_exchanges_the_whole_bundle_and_keeps_the_raw_trace_bytes(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = (run / "raw_trace.ndjson").read_bytes()
    inode = (run / "raw_trace.ndjson").stat().st_ino
    write_derived(run, 0.5)
    assert (run / "raw_trace.ndjson").read_bytes() == raw
    assert (run / "raw_trace.ndjson").stat().st_ino == inode  # hard-linked, never copied or rewritten
    assert (
        json.loads((run / "manifest.json").read_text())["derivation_config_id"] == "motifs/online-cosine-0.50"
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
