"""Comparing two runs: zero on identical runs, symmetric, finds where routing differs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inferoscope import BundleOpenError, RunReader, write_run_bundle
from inferoscope.compare import compare_runs, jensen_shannon_bits, jensen_shannon_rows
from inferoscope.extraction import MoELayerCaptureInput, build_token_complete_event

from .conftest import VALID, make_bundle_parts, write_raw_bundle

B = VALID / "b_olmoe_64tok_16x64_top8"


def _pair(tmp_path: Path, perturb_token: int | None = None, tokens: int = 12) -> tuple[Path, Path]:
    manifest, events, layout = make_bundle_parts(tokens=tokens, layers=3, experts=8, top_k=2, seed=3)
    a = write_run_bundle(tmp_path / "a", manifest, events, layout)
    if perturb_token is not None:
        rng = np.random.default_rng(99)
        old = events[perturb_token]
        events[perturb_token] = build_token_complete_event(
            run_id=old["run_id"],
            token_index=perturb_token,
            token_id=old["token_id"],
            token_text=old["token_text"],
            context_length=old["context_length"],
            decode_start_ms=0.0,
            decode_end_ms=1.0,
            layer_inputs=[
                MoELayerCaptureInput(i, (rng.standard_normal(8) * 5).tolist(), 2) for i in range(3)
            ],
        )
    b = write_run_bundle(tmp_path / "b", manifest, events, layout)
    return a, b


def test_identical_runs_agree_completely(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    data = compare_runs(a, b).to_dict()
    assert data["mean_topk_jaccard"] == 1.0 and data["mean_jsd_bits"] == 0.0 and data["top1_agreement"] == 1.0
    assert data["notes"] == [] and data["aligned_tokens"] == 12


def test_comparison_is_symmetric_and_finds_the_changed_token(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, perturb_token=7)
    forward, backward = compare_runs(a, b), compare_runs(b, a)
    assert np.allclose(forward.jsd, backward.jsd) and np.allclose(forward.jaccard, backward.jaccard)
    assert forward.worst_tokens(1)[0][0] == 7
    assert np.count_nonzero(forward.jsd) == np.count_nonzero(forward.jsd[7]) > 0


def test_jensen_shannon_is_bounded_and_zero_on_equal() -> None:
    p = np.array([1.0, 0.0])
    assert jensen_shannon_bits(p, p) == 0.0
    assert jensen_shannon_bits(p, np.array([0.0, 1.0])) == pytest.approx(1.0)


@pytest.mark.parametrize("zeros", [False, True])
def test_the_divergence_of_many_rows_is_that_of_each_row_alone(zeros: bool) -> None:
    """Rows with zero probabilities (a one-hot router, disjoint supports) and rows without."""
    rng = np.random.default_rng(3)
    p, q = rng.dirichlet(np.ones(8), size=50), rng.dirichlet(np.ones(8), size=50)
    if zeros:
        p[::3, :4] = 0.0
        q[1::3] = np.eye(8)[rng.integers(0, 8, size=q[1::3].shape[0])]
    rows = jensen_shannon_rows(p, q)
    alone = [jensen_shannon_bits(a, b) for a, b in zip(p, q, strict=True)]
    assert rows.tolist() == pytest.approx(alone, rel=1e-12, abs=1e-15)  # sums grouped otherwise
    assert np.isfinite(rows).all() and ((rows >= 0) & (rows <= 1)).all()


def test_different_lengths_and_shapes_are_reported_not_crashed_on(tmp_path: Path) -> None:
    a, _ = _pair(tmp_path)
    result = compare_runs(a, B)
    text = " ".join(result.notes)
    assert "different lengths: 12 vs 64" in text and "only in B" in text and "different expert counts" in text
    assert result.aligned == 12


def test_compare_cli_prints_a_summary_and_json(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, perturb_token=4)
    text = subprocess.run(
        [sys.executable, "-m", "inferoscope", "compare", str(a), str(b)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "per layer" in text and "least agreeing tokens" in text and " tok4 " in text
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "inferoscope", "compare", "--json", str(a), str(b)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert data["worst_tokens"][0]["token"] == 4 and len(data["token_agreement"]) == 12
    missing = subprocess.run(
        [sys.executable, "-m", "inferoscope", "compare", str(a), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


@pytest.mark.parametrize("trace", ["missing", "a folder"])
def test_a_run_without_a_readable_raw_trace_is_refused_not_compared_as_empty(
    tmp_path: Path, trace: str
) -> None:
    a, _ = _pair(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"run_id": 3')  # an invalid manifest, as in a half-copied run
    if trace == "a folder":
        (broken / "raw_trace.ndjson").mkdir()
    for first, second, label in ((broken, a, "run A"), (a, broken, "run B")):
        with pytest.raises(BundleOpenError, match=f"{label} .*raw_trace.ndjson.*nothing to compare"):
            compare_runs(first, second)
        done = subprocess.run(
            [sys.executable, "-m", "inferoscope", "compare", "--json", str(first), str(second)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and "nothing to compare" in done.stderr


def _broken_b(tmp_path: Path, how: str) -> tuple[Path, Path]:
    manifest, events, layout = make_bundle_parts(tokens=4)
    a = write_raw_bundle(tmp_path / "a", manifest, events, layout)
    lines = [json.dumps(e, sort_keys=True) for e in events]
    if how == "event 0 unreadable":
        lines[0] = "{ not json"
    elif how == "topk_indices an int":
        events[1]["layers"][0]["topk_indices"] = 3
        lines[1] = json.dumps(events[1])
    else:  # layers of the wrong type
        events[2]["layers"] = "x"
        events[3]["layers"][0]["router_probs"] = {"a": 1}
        lines[2], lines[3] = json.dumps(events[2]), json.dumps(events[3])
    return a, write_raw_bundle(tmp_path / "b", manifest, events, layout, raw_lines=lines)


@pytest.mark.parametrize("how", ["event 0 unreadable", "topk_indices an int", "ill-typed layers"])
def test_unreadable_or_ill_typed_events_are_noted_per_token_and_the_rest_compared(
    tmp_path: Path, how: str
) -> None:
    a, b = _broken_b(tmp_path, how)
    result = compare_runs(a, b)
    assert result.notes and any("not compared" in note for note in result.notes)
    agreement = result.token_agreement()
    assert np.isfinite(agreement).sum() >= 2  # the sound tokens are still compared
    cli = subprocess.run(
        [sys.executable, "-m", "inferoscope", "compare", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0 and "note:" in cli.stdout and "Traceback" not in cli.stderr


def test_a_reordered_top_k_is_told_apart_from_a_changed_one(tmp_path: Path) -> None:
    """Engine-vs-training comparisons confuse the two: the same set in another order is not a
    different choice of experts."""
    import json

    import numpy as np

    from inferoscope.arrays.npy import file_sha256, write_array
    from inferoscope.synthetic import write_synthetic_v02

    a = write_synthetic_v02(tmp_path / "a", "run", 8, layers=3, experts=8, top_k=2)
    b = tmp_path / "b" / "run"
    b.parent.mkdir()
    import shutil

    shutil.copytree(a, b)
    manifest = json.loads((b / "manifest.json").read_text())
    for role in ("scores", "weights"):  # top-k only, as a serving engine records it
        relpath = manifest["routing"]["groups"][0]["arrays"].pop(role)
        manifest["arrays"].pop(relpath)
        (b / relpath).unlink()
    selected = np.load(b / "arrays/moe.selected.npy")
    selected[3, 1] = selected[3, 1][::-1]  # same set, other order
    selected[5, 2, 1] = next(e for e in range(8) if e not in selected[5, 2])  # another set
    (b / "arrays/moe.selected.npy").unlink()
    write_array(b / "arrays/moe.selected.npy", selected, "int16")
    manifest["arrays"]["arrays/moe.selected.npy"]["sha256"] = file_sha256(b / "arrays/moe.selected.npy")
    (b / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    result = compare_runs(a, b)
    assert result.same_set[3, 1] == 1.0 and result.same_order[3, 1] == 0.0
    assert result.same_set[5, 2] == 0.0 and np.isnan(result.same_order[5, 2])
    assert np.nansum(1 - result.same_set) == 1 and np.nansum(1 - result.same_order) == 1
    rows = {row["layer_index"]: row for row in result.layer_summary()}
    assert rows[1]["identical_topk_set"] == 1.0 and rows[1]["same_order_given_set"] == 7 / 8
    assert rows[2]["identical_topk_set"] == 7 / 8
    # the flip's margin, in A's scores (B has none): how far B's expert was from A's top-k
    layer = RunReader(a).token_event(5).layer(2)
    assert layer is not None and layer.scores is not None
    flipped = int(selected[5, 2, 1])
    expected = float(layer.scores[list(layer.selected)].min()) - float(layer.scores[flipped])
    assert result.flip_margin[5, 2] == pytest.approx(expected) and expected > 0
    assert np.isnan(result.flip_margin).sum() == result.flip_margin.size - 1  # only where sets differ
    ranked = np.sort(layer.scores)[::-1]
    assert result.boundary_gap[5, 2] == pytest.approx(ranked[1] - ranked[2])  # k = 2
    assert rows[2]["flips_with_margin"] == 1 and rows[2]["median_flip_margin"] == pytest.approx(expected)
    assert rows[1]["flips_with_margin"] == 0 and rows[1]["median_boundary_gap"] is not None


def test_the_app_marks_a_reordered_top_k_apart() -> None:
    from inferoscope_tui.compare_view import compare_mark

    assert compare_mark([3, 5], [5, 3]) == "↕"
    assert compare_mark([3, 5], [3, 6]) == "~"
    assert compare_mark([3, 5], [6, 5]) == "≠"
    assert compare_mark([3, 5], [3, 5]) == " "


def test_reading_by_blocks_gives_exactly_the_token_by_token_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two v0.1.0 runs are compared a block of events at a time (worker processes decode the
    blocks); the numbers and notes equal the event-by-event comparison, odd events included."""
    import copy

    from inferoscope.bundle import blocks

    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2048)  # many blocks, so several workers and windows
    manifest, events, layout = make_bundle_parts(tokens=60, layers=3, experts=8, run_id="run-a")
    a = write_raw_bundle(tmp_path / "a", manifest, events, layout)
    other = copy.deepcopy(events)
    rng = np.random.default_rng(4)
    for t, event in enumerate(other):
        event["run_id"] = "run-b"
        if t % 5 == 0:  # the same experts in another order
            event["layers"][1]["topk_indices"] = event["layers"][1]["topk_indices"][::-1]
        if t % 7 == 0:  # another expert chosen
            chosen = event["layers"][2]["topk_indices"]
            chosen[1] = int(rng.choice([e for e in range(8) if e not in chosen]))
    other[9]["token_id"] += 1
    other[30]["layers"][0]["router_probs"] = other[30]["layers"][0]["router_probs"][:4]  # another shape
    lines = [json.dumps(e, sort_keys=True) for e in other]
    lines[17] = "{not json"
    b = write_raw_bundle(tmp_path / "b", {**manifest, "run_id": "run-b"}, other[:55], layout, lines[:55])
    fast = compare_runs(a, b)
    slow_a, slow_b = RunReader(a), RunReader(b)
    slow_a.build_index()
    slow_b.build_index()  # an index already built: the event-by-event path
    slow = compare_runs(slow_a, slow_b)
    assert fast.to_dict() == slow.to_dict()
    for name in ("jaccard", "jsd", "top1_agree", "same_set", "same_order", "flip_margin", "boundary_gap"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name), equal_nan=True), name
    assert fast.tokens_b == 55 and fast.token_id_differs == [9]
    assert any("token 17" in note for note in fast.notes) and any("[0]" in note for note in fast.notes)
    assert np.nansum(1 - fast.same_set) == len(range(0, 55, 7))


def test_v02_runs_compared_from_their_arrays_give_the_token_by_token_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two v0.2 runs are compared a block of tokens at a time from their array files; odd
    tokens (an unreadable line, non-finite scores, an id out of range, a repeated id) go token
    by token; every number and note equals the token-by-token comparison."""
    import shutil

    import inferoscope.compare as compare_module
    from inferoscope.arrays.npy import write_array
    from inferoscope.synthetic import write_synthetic_v02

    monkeypatch.setattr(compare_module, "V02_BLOCK", 7)
    pairs = []
    for router in ("softmax", "deepseek"):
        a = write_synthetic_v02(
            tmp_path / router, "a", 40, layers=3, experts=16, top_k=4, router=router, seed=1
        )
        b = tmp_path / router / "b"
        shutil.copytree(write_synthetic_v02(tmp_path / "src" / router, "b", 40, layers=3, experts=16, top_k=4,
                                            router=router, seed=1), b)  # fmt: skip
        selected = np.load(b / "arrays/moe.selected.npy")
        scores = np.load(b / "arrays/moe.scores.npy")
        selected[3, 1] = selected[3, 1][::-1]
        selected[5, 2, 0] = next(e for e in range(16) if e not in selected[5, 2])
        selected[8, 0, 1] = 99  # out of range
        selected[9, 1, 1] = selected[9, 1, 0]  # repeated
        scores[11, 2, 3] = np.nan
        for name, values, dtype in (("selected", selected, "int16"), ("scores", scores, "float32")):
            (b / f"arrays/moe.{name}.npy").unlink()
            write_array(b / f"arrays/moe.{name}.npy", values, dtype)
        lines = (b / "raw_trace.ndjson").read_text().splitlines()
        lines[13] = "{not json"
        lines[14] = lines[14].replace('"token_id":', '"token_id": 1, "x":', 1)
        (b / "raw_trace.ndjson").write_text("\n".join(lines) + "\n")
        pairs += [(a, b), (b, a), (a, a)]
    for a, b in pairs:
        fast = compare_runs(a, b)
        monkeypatch.setattr(compare_module, "READ_BY_BLOCKS", False)
        slow = compare_runs(a, b)
        monkeypatch.setattr(compare_module, "READ_BY_BLOCKS", True)
        assert repr(fast.to_dict()) == repr(slow.to_dict())
        for name in ("jaccard", "jsd", "top1_agree", "same_set", "same_order", "flip_margin", "boundary_gap"):
            assert np.array_equal(getattr(fast, name), getattr(slow, name), equal_nan=True), name
    result = compare_runs(*pairs[0])
    assert result.same_set[3, 1] == 1.0 and result.same_order[3, 1] == 0.0 and result.same_set[5, 2] == 0.0
    assert any("token 13" in note for note in result.notes)


def test_a_long_v02_pair_compared_into_a_file_gives_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Halves compared in two processes (or the whole pair in one, where it cannot fork) land in
    arrays of one unlinked file whose pages are given back as rows are done and as the summaries
    read them: every number and the JSON are those of one process in memory."""
    import inferoscope.compare as compare_module
    from inferoscope.synthetic import write_synthetic_v02

    a = write_synthetic_v02(tmp_path / "a", "a", 90, layers=3, experts=16, top_k=4, seed=1)
    b = write_synthetic_v02(tmp_path / "b", "b", 85, layers=3, experts=16, top_k=4, seed=2)
    monkeypatch.setattr(compare_module, "V02_BLOCK", 4)
    monkeypatch.setattr(compare_module, "can_fork_beside", lambda: True)  # threads other tests left
    split = compare_runs(a, b)
    assert split.release.__self__.spill is not None  # type: ignore[attr-defined]  # the file
    monkeypatch.setattr(compare_module, "can_fork_beside", lambda: False)  # one core
    monkeypatch.setattr(compare_module, "FILE_BACKED_FROM", 10**9)
    alone = compare_runs(a, b)
    assert alone.release.__self__.spill is None  # type: ignore[attr-defined]  # in memory
    assert json.dumps(split.to_dict()) == json.dumps(alone.to_dict())
    monkeypatch.setattr(compare_module, "FILE_BACKED_FROM", 32)  # one process, into the file
    one_file = compare_runs(a, b)
    assert one_file.release.__self__.spill is not None  # type: ignore[attr-defined]
    assert json.dumps(one_file.to_dict()) == json.dumps(alone.to_dict())
    for name in ("jaccard", "jsd", "top1_agree", "flip_margin", "boundary_gap"):
        assert np.array_equal(getattr(one_file, name), getattr(alone, name), equal_nan=True), name
    assert split.usual_gap(1) == alone.usual_gap(1)
    for name in ("jaccard", "jsd", "top1_agree", "same_set", "same_order", "flip_margin", "boundary_gap"):
        assert np.array_equal(getattr(split, name), getattr(alone, name), equal_nan=True), name
    assert split.aligned == 85 and np.isfinite(split.jaccard).all()

    def full(size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compare_module, "can_fork_beside", lambda: True)
    monkeypatch.setattr(compare_module, "_nan_file", full)  # no room for the file: shared memory
    in_memory = compare_runs(a, b)
    assert json.dumps(in_memory.to_dict()) == json.dumps(alone.to_dict())
