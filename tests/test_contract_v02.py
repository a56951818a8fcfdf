"""Contract v0.2: every rule has a bundle that breaks it, and the issue says where.

Each test writes a valid run (softmax or DeepSeek-V3-style), breaks one thing on disk (keeping
checksums right unless the checksum is the point), and asserts the code and its location.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from inferoscope import RunReader, ValidationIssue
from inferoscope.arrays.npy import file_sha256, from_disk, write_array
from inferoscope.synthetic import write_synthetic_v02

TOKENS, LAYERS, EXPERTS, TOP_K = 12, 3, 16, 4


def make(tmp_path: Path, router: str = "softmax", float_dtype: str = "float32") -> Path:
    return write_synthetic_v02(
        tmp_path,
        f"{router}-{float_dtype}",
        TOKENS,
        layers=LAYERS,
        experts=EXPERTS,
        top_k=TOP_K,
        router=router,
        float_dtype=float_dtype,
        first_layer=1,
    )


def manifest_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())


def save_manifest(run: Path, manifest: dict[str, Any]) -> None:
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read(run: Path, role: str) -> np.ndarray:
    stored = np.load(run / f"arrays/moe.{role}.npy")
    dtype = manifest_of(run)["arrays"][f"arrays/moe.{role}.npy"]["dtype"]
    return np.array(from_disk(stored, dtype))


def rewrite(run: Path, role: str, values: np.ndarray, dtype: str | None = None) -> None:
    """Replace an array file and keep the manifest's declaration (dtype, shape, SHA-256) true."""
    relpath = f"arrays/moe.{role}.npy"
    manifest = manifest_of(run)
    declared = manifest["arrays"][relpath]
    dtype = dtype or declared["dtype"]
    (run / relpath).unlink()
    write_array(run / relpath, values, dtype)
    declared.update(dtype=dtype, shape=list(values.shape), sha256=file_sha256(run / relpath))
    save_manifest(run, manifest)


def issues(run: Path, code: str) -> list[ValidationIssue]:
    report = RunReader(run).validate()
    found = [issue for issue in report.issues if issue.code == code]
    assert found, f"expected {code}, got {report.counts_by_code()}"
    return found


def only(run: Path, code: str) -> ValidationIssue:
    report = RunReader(run).validate()
    assert set(report.counts_by_code()) == {code}, report.counts_by_code()
    return next(issue for issue in report.issues if issue.code == code)


@pytest.mark.parametrize("router", ["softmax", "deepseek"])
@pytest.mark.parametrize("float_dtype", ["float32", "float16", "bfloat16"])
def test_valid_runs_of_both_routers_and_every_dtype_are_clean(
    tmp_path: Path, router: str, float_dtype: str
) -> None:
    run = make(tmp_path, router, float_dtype)
    report = RunReader(run).validate()
    assert report.ok and report.total == 0, report.counts_by_code()
    assert report.aggregates.events == TOKENS and sorted(report.aggregates.layers) == [1, 2, 3]


# -- values, located by token, layer and expert ------------------------------------------------


def test_a_selection_that_contradicts_the_scores_is_located(tmp_path: Path) -> None:
    run = make(tmp_path)
    selected, scores = read(run, "selected"), read(run, "scores")
    loser = int(np.argsort(scores[5, 1])[0])  # the weakest expert replaces the last pick
    selected[5, 1, -1] = loser
    winner = int(np.argsort(-scores[5, 1], kind="stable")[TOP_K - 1])
    rewrite(run, "selected", selected)
    found = issues(run, "selection_mismatch")
    assert len(found) == 1
    where = found[0].location
    assert (where.file, where.token_index, where.layer_index, where.expert_index) == (
        "arrays/moe.selected.npy",
        5,
        2,
        winner,
    )
    assert found[0].scope == "raw_event.layer[2]" and "is not selected" in (found[0].detail or "")


def test_a_deepseek_selection_that_ignores_its_bias_is_flagged(tmp_path: Path) -> None:
    """Plain top-k of the sigmoid scores (what a softmax-minded tool would write) is wrong here."""
    run = make(tmp_path, "deepseek")
    scores = read(run, "scores")
    naive = np.argsort(-scores, axis=-1, kind="stable")[..., :TOP_K]
    model = read(run, "selected")
    differs = ~np.all(np.sort(naive, -1) == np.sort(model, -1), axis=-1)
    assert differs.any()  # the bias and the groups change the choice
    rewrite(run, "selected", naive)
    found = issues(run, "selection_mismatch")
    assert {(i.location.token_index, i.location.layer_index) for i in found} <= {
        (int(t), int(slot) + 1) for t, slot in zip(*np.nonzero(differs), strict=True)
    }


def test_selected_out_of_range_and_repeated(tmp_path: Path) -> None:
    run = make(tmp_path)
    selected = read(run, "selected")
    selected[2, 0, 1] = EXPERTS + 3
    selected[4, 2, 1] = selected[4, 2, 0]
    rewrite(run, "selected", selected)
    out = issues(run, "selected_index_out_of_bounds")[0].location
    assert (out.token_index, out.layer_index, out.expert_index) == (2, 1, EXPERTS + 3)
    dup = issues(run, "duplicate_selected_index")[0].location
    assert (dup.token_index, dup.layer_index) == (4, 3)


def test_weights_that_break_the_mixing_rule(tmp_path: Path) -> None:
    run = make(tmp_path)
    weights, selected = read(run, "weights"), read(run, "selected")
    weights[7, 2, 3] += 0.1
    rewrite(run, "weights", weights)
    issue = only(run, "weight_mismatch")
    where = issue.location
    assert (where.file, where.token_index, where.layer_index, where.expert_index) == (
        "arrays/moe.weights.npy",
        7,
        3,
        int(selected[7, 2, 3]),
    )


def test_scores_not_finite_out_of_range_or_not_summing_to_one(tmp_path: Path) -> None:
    run = make(tmp_path)
    scores = read(run, "scores")
    scores[1, 0, 9] = np.nan
    scores[3, 1, :] *= 0.5  # still in [0, 1], sums to 0.5
    scores[6, 2, 0] = 1.5
    rewrite(run, "scores", scores)
    assert issues(run, "value_not_finite")[0].location.expert_index == 9
    total = issues(run, "score_sum_mismatch")
    assert (3, 2) in {(i.location.token_index, i.location.layer_index) for i in total}
    high = issues(run, "score_out_of_range")[0].location
    assert (high.token_index, high.layer_index, high.expert_index) == (6, 3, 0)


def test_a_sigmoid_score_may_not_sum_to_one_but_must_stay_in_range(tmp_path: Path) -> None:
    run = make(tmp_path, "deepseek")
    scores = read(run, "scores")
    assert not np.allclose(scores.sum(-1), 1.0)  # and the run is clean
    assert RunReader(run).validate().ok
    scores[0, 0, 0] = -0.2
    rewrite(run, "scores", scores)
    assert issues(run, "score_out_of_range")[0].location.expert_index == 0


# -- files --------------------------------------------------------------------------------------


def test_a_flipped_byte_is_a_checksum_mismatch(tmp_path: Path) -> None:
    run = make(tmp_path)
    path = run / "arrays/moe.scores.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # the last score, slightly changed: still a valid float
    path.write_bytes(bytes(data))
    found = issues(run, "array_checksum_mismatch")
    assert found[0].location.file == "arrays/moe.scores.npy"


def test_a_truncated_array_file_is_reported_not_read(tmp_path: Path) -> None:
    run = make(tmp_path)
    path = run / "arrays/moe.weights.npy"
    path.write_bytes(path.read_bytes()[:-10])
    issue = issues(run, "array_size_mismatch")[0]
    assert issue.location.file == "arrays/moe.weights.npy" and "header declares" in (issue.detail or "")


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"not an array", "array_header_invalid"),
        (b"", "array_header_invalid"),
        (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 70, "array_header_invalid"),
    ],
)
def test_a_file_that_is_not_an_npy_array(tmp_path: Path, content: bytes, code: str) -> None:
    run = make(tmp_path)
    (run / "arrays/moe.scores.npy").write_bytes(content)
    assert issues(run, code)[0].location.file == "arrays/moe.scores.npy"


def test_a_missing_array_file(tmp_path: Path) -> None:
    run = make(tmp_path)
    (run / "arrays/moe.weights.npy").unlink()
    assert issues(run, "missing_file")[0].location.file == "arrays/moe.weights.npy"


def test_dtype_and_shape_must_match_the_declaration_and_the_role(tmp_path: Path) -> None:
    run = make(tmp_path)
    rewrite(run, "scores", read(run, "scores").astype(np.float64), dtype="float64")  # float32 declared run
    assert "must be float32" in (issues(run, "array_dtype_mismatch")[0].detail or "")
    run2 = make(tmp_path / "b")
    rewrite(run2, "selected", read(run2, "selected")[:, :, :2])
    assert "not [3, 4]" in (issues(run2, "array_shape_mismatch")[0].detail or "")


def test_rows_must_match_the_events(tmp_path: Path) -> None:
    run = make(tmp_path)
    for role in ("selected", "weights", "scores"):
        rewrite(run, role, read(run, role)[:-1])
    found = issues(run, "array_row_count_mismatch")
    assert {i.location.file for i in found} == {
        f"arrays/moe.{r}.npy" for r in ("selected", "weights", "scores")
    }
    assert f"{TOKENS - 1} rows but the run has {TOKENS} raw events" in (found[0].detail or "")


# -- the declaration ----------------------------------------------------------------------------


def edit_manifest(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = manifest_of(run)
    change(manifest)
    save_manifest(run, manifest)


def test_an_impossible_rule_is_reported_in_the_manifest(tmp_path: Path) -> None:
    run = make(tmp_path, "deepseek")
    edit_manifest(run, lambda m: m["routing"]["groups"][0]["selection"].update(n_group=5))
    issue = issues(run, "routing_rule_invalid")[0]
    assert issue.location.file == "manifest.json" and "not a multiple of n_group 5" in (issue.detail or "")


def test_a_bias_rule_without_its_bias_array(tmp_path: Path) -> None:
    run = make(tmp_path)
    edit_manifest(run, lambda m: m["routing"]["groups"][0]["selection"].update(bias=True))
    assert "no bias array" in (issues(run, "routing_rule_invalid")[0].detail or "")


def test_a_layer_in_two_groups(tmp_path: Path) -> None:
    run = make(tmp_path)

    def split(m: dict[str, Any]) -> None:
        group = m["routing"]["groups"][0]
        twin = json.loads(json.dumps(group))
        twin["name"] = "twin"
        twin["layers"] = [2]
        twin["arrays"] = {"selected": group["arrays"]["selected"]}
        m["routing"]["groups"].append(twin)

    edit_manifest(run, split)
    assert issues(run, "routing_layer_repeated")[0].location.layer_index == 2
    assert issues(run, "array_path_repeated")


def test_undeclared_and_unreferenced_arrays(tmp_path: Path) -> None:
    run = make(tmp_path)

    def change(m: dict[str, Any]) -> None:
        m["arrays"]["arrays/spare.npy"] = m["arrays"].pop("arrays/moe.weights.npy")

    edit_manifest(run, change)
    assert issues(run, "array_not_declared")[0].location.json_path == "$.routing.groups[0].arrays.weights"
    assert "arrays/spare.npy" in (issues(run, "array_not_referenced")[0].detail or "")


def test_the_manifest_schema_is_v02s_own(tmp_path: Path) -> None:
    run = make(tmp_path)
    edit_manifest(run, lambda m: m["routing"].update(float_dtype="float8"))
    assert any("float_dtype" in i.message for i in issues(run, "schema_violation"))
    edit_manifest(run, lambda m: m.pop("routing"))
    assert any("routing" in i.message for i in issues(run, "schema_violation"))


def test_token_lines_follow_the_v02_event_schema(tmp_path: Path) -> None:
    run = make(tmp_path)
    lines = (run / "raw_trace.ndjson").read_text().splitlines()
    event = json.loads(lines[3])
    event["layers"] = []  # routing belongs in the arrays
    lines[3] = json.dumps(event, sort_keys=True)
    event = json.loads(lines[5])
    event["timing_ms"]["decode_duration"] = 99.0
    lines[5] = json.dumps(event, sort_keys=True)
    (run / "raw_trace.ndjson").write_text("\n".join(lines) + "\n")
    schema = issues(run, "schema_violation")[0]
    assert schema.location.line == 4 and "layers" in schema.message
    assert issues(run, "decode_duration_mismatch")[0].location.token_index == 5


def test_many_bad_rows_are_counted_even_past_the_kept_issues(tmp_path: Path) -> None:
    run = make(tmp_path)
    weights = read(run, "weights") * 2.0
    rewrite(run, "weights", weights)
    report = RunReader(run).validate()
    assert report.counts_by_code() == {"weight_mismatch": TOKENS * LAYERS}


# -- every reader path takes v0.2 ---------------------------------------------------------------


def test_export_writes_the_recorded_selection_weights_and_scores(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from inferoscope.export import export_parquet

    run = make(tmp_path, "deepseek", "bfloat16")
    result = export_parquet(run, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert result.rows == len(table) == TOKENS * LAYERS
    selected, weights, scores = read(run, "selected"), read(run, "weights"), read(run, "scores")
    row = table[5 * LAYERS + 1]  # token 5, layer 2 (slot 1): rows go token by token, layers ascending
    assert (row["token_index"], row["layer_index"], row["score_function"]) == (5, 2, "sigmoid")
    assert row["selected"] == selected[5, 1].tolist() and row["top1_expert"] == selected[5, 1, 0]
    assert np.allclose(row["weights"], weights[5, 1]) and np.allclose(row["scores"], scores[5, 1])
    share = scores[5, 1] / scores[5, 1].sum()
    assert row["entropy"] == pytest.approx(float(-(share * np.log(share)).sum()), rel=1e-5)


def test_export_reads_token_fields_typed_a_block_at_a_time_and_odd_ones_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block of token lines is decoded in one typed call; a block holding a field of another
    type (or a lone surrogate, or a blank line between tokens) is read line by line, tolerant of
    any type. Both give the same rows: forcing every block line by line changes no byte."""
    pq = pytest.importorskip("pyarrow.parquet")
    import inferoscope.export_v02 as export_v02
    from inferoscope.export import export_parquet

    run = make(tmp_path, "softmax")
    lines = (run / "raw_trace.ndjson").read_text().splitlines()
    odd = json.loads(lines[3])
    odd["token_id"], odd["token_text"] = "seven", "caf\u00e9 \ud800"
    odd["timing_ms"] = {"decode_start": 1, "decode_end": 2}
    lines[3] = json.dumps(odd, sort_keys=True)
    lines[4] = lines[4].replace('"token_text": ', '"token_text": "na\\u00efve", "x": ', 1)
    (run / "raw_trace.ndjson").write_text("\n".join(lines[:6]) + "\n  \n" + "\n".join(lines[6:]) + "\n")
    monkeypatch.setattr(export_v02, "BLOCK_TOKENS", 3)  # blocks 0-2 typed, 3-5 line by line
    decoded: list[int] = []
    real = export_v02._META_LINES

    class Counting:
        def decode_lines(self, data: bytes) -> list[object]:
            out: list[object] = real.decode_lines(data)
            decoded.append(len(out))
            return out

    monkeypatch.setattr(export_v02, "_META_LINES", Counting())
    typed = export_parquet(run, tmp_path / "typed.parquet")  # unchecked, as --force
    assert decoded and sum(decoded) < TOKENS  # some blocks typed, the odd ones line by line
    monkeypatch.setattr(export_v02, "_META_LINES", msgspec.json.Decoder(list))  # never fits
    export_parquet(run, tmp_path / "lines.parquet")
    assert (tmp_path / "typed.parquet").read_bytes() == (tmp_path / "lines.parquet").read_bytes()
    rows = pq.read_table(tmp_path / "typed.parquet").to_pylist()
    assert typed.rows == len(rows) == TOKENS * LAYERS
    row = rows[3 * LAYERS]
    assert row["token_id"] is None and row["token_id_text"] is None
    assert row["token_text"] == "caf\u00e9 \\ud800" and row["decode_duration_ms"] is None
    assert rows[4 * LAYERS]["token_text"] == "na\u00efve"
    assert rows[6 * LAYERS]["token_index"] == 6  # after the blank line


@pytest.mark.parametrize("variant", ["tokens", "experts"])
@pytest.mark.parametrize("router", ["softmax", "deepseek"])
def test_scrambled_twins_of_v02_runs_obey_their_declared_rule(
    tmp_path: Path, variant: str, router: str
) -> None:
    from inferoscope.scramble import scramble_bundle

    run = make(tmp_path, router)
    twin = scramble_bundle(run, tmp_path / "twins", variant, seed=3)
    reader = RunReader(twin)
    assert reader.profile == "v0.2" and reader.validate().ok  # selection and weights rules still hold
    original, shuffled = read(run, "selected"), read(twin, "selected")
    assert not np.array_equal(original, shuffled)
    if variant == "tokens":  # every layer keeps exactly its rows, in another token order
        for slot in range(LAYERS):
            assert sorted(map(tuple, original[:, slot])) == sorted(map(tuple, shuffled[:, slot]))


def test_an_expert_twin_is_the_same_whether_its_labels_are_drawn_beside_or_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inferoscope.scramble_v02 as v02
    from inferoscope.scramble import scramble_bundle

    run = make(tmp_path)
    here = scramble_bundle(run, tmp_path / "here", "experts", seed=4)
    helpers: list[object] = []
    real = v02._Labels.__init__

    def spy(self: Any, *args: Any) -> None:
        real(self, *args)
        helpers.append(self.helper)

    monkeypatch.setattr(v02._Labels, "__init__", spy)
    monkeypatch.setattr(v02, "BLOCK_TOKENS", 5)  # three blocks, the last one short
    monkeypatch.setattr(v02, "LABELS_BESIDE_FROM", 1)
    monkeypatch.setattr(v02, "can_fork_beside", lambda: True)  # two cores; threads other tests left
    beside = scramble_bundle(run, tmp_path / "beside", "experts", seed=4)
    assert len(helpers) == 1 and helpers[0] is not None, "a forked process drew the labels"

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert files(here) == files(beside)

    def two_then_die(conn: Any, rng: Any, count: int, groups: Any) -> None:
        for _ in range(2):  # two blocks' labels, then the helper is gone
            conn.send_bytes(v02._labels(rng, 5 * LAYERS, groups[0]).astype(np.int8).reshape(-1).data)
        os._exit(9)

    monkeypatch.setattr(v02, "_draw_labels", two_then_die)
    orphaned = scramble_bundle(run, tmp_path / "orphaned", "experts", seed=4)
    assert files(orphaned) == files(here)


def test_inspect_json_states_the_contract_and_the_routing(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = make(tmp_path, "deepseek")
    out = subprocess.run(
        [sys.executable, "-m", "inferoscope", "inspect", str(run), "--json"], capture_output=True, text=True
    )
    data = json.loads(out.stdout)
    assert out.returncode == 0 and data["contract"] == "v0.2" and data["float_dtype"] == "float32"
    (group,) = data["routing"]
    assert group["scores"] == "sigmoid score" and "scores + bias" in group["selection"]
    assert group["shared_experts"] == 1 and "times 2.5" in group["mixing_weights"]
    assert data["raw_events"] == TOKENS


def test_a_layer_may_be_routed_at_two_sites_but_not_twice_at_one(tmp_path: Path) -> None:
    """JetMoE routes attention heads and MLP experts in the same layer: two groups, two sites."""
    run = make(tmp_path)

    def second_site(m: dict[str, Any], site: str) -> None:
        group = m["routing"]["groups"][0]
        twin = json.loads(json.dumps(group))
        twin.update(name="attention", site=site)
        twin["arrays"] = {role: path.replace("moe.", "att.") for role, path in group["arrays"].items()}
        m["routing"]["groups"].append(twin)
        for role, path in group["arrays"].items():
            m["arrays"][twin["arrays"][role]] = m["arrays"][path]

    for role in ("selected", "weights", "scores"):
        (run / f"arrays/att.{role}.npy").write_bytes((run / f"arrays/moe.{role}.npy").read_bytes())
    edit_manifest(run, lambda m: second_site(m, "attention"))
    report = RunReader(run).validate()
    assert report.ok, report.counts_by_code()
    sites = [(layer.layer_index, layer.site) for layer in RunReader(run).token_event(0).layers]
    assert (1, "attention") in sites and (1, "mlp") in sites
    edit_manifest(run, lambda m: m["routing"]["groups"][1].update(site="mlp"))
    assert issues(run, "routing_layer_repeated")[0].location.layer_index == 1


def test_hash_routed_layers_are_recorded_not_checked(tmp_path: Path) -> None:
    run = make(tmp_path)
    edit_manifest(run, lambda m: m["routing"]["groups"][0]["selection"].update(rule="hash"))
    selected = read(run, "selected")
    selected[0, 0] = selected[0, 0][::-1]  # any order, any set: a hash decided it
    selected[1, 0, 0] = int(np.argsort(read(run, "scores")[1, 0])[0])
    rewrite(run, "selected", selected)
    report = RunReader(run).validate()
    assert "selection_mismatch" not in report.counts_by_code()


def test_a_bias_that_is_not_finite_is_located_and_the_selection_not_judged_by_it(tmp_path: Path) -> None:
    run = make(tmp_path, "deepseek")
    bias = read(run, "bias")
    bias[2, 5] = np.inf
    rewrite(run, "bias", bias)
    issue = only(run, "value_not_finite")
    assert (issue.location.file, issue.location.layer_index, issue.location.expert_index) == (
        "arrays/moe.bias.npy",
        3,
        5,
    )


def test_a_weight_that_is_not_finite_is_located(tmp_path: Path) -> None:
    run = make(tmp_path)
    weights = read(run, "weights")
    weights[9, 0, 2] = np.nan
    rewrite(run, "weights", weights)
    issue = only(run, "value_not_finite")
    assert (issue.location.file, issue.location.token_index, issue.location.layer_index) == (
        "arrays/moe.weights.npy",
        9,
        1,
    )


def _token_lines_edited(run: Path, how: str) -> None:
    path = run / "raw_trace.ndjson"
    lines = path.read_bytes().split(b"\n")[:-1]
    if how == "blank line":
        lines.insert(40, b"")
    elif how == "crlf":
        lines = [line + b"\r" for line in lines]
    elif how == "no final newline":
        path.write_bytes(b"\n".join(lines))
        return
    elif how == "another run_id late":
        event = json.loads(lines[-3])
        event["run_id"] = "other"
        lines[-3] = json.dumps(event, sort_keys=True).encode()
    elif how == "tokens out of order":
        lines[50], lines[51] = lines[51], lines[50]
    elif how == "two objects on a line":  # and a whitespace line: as many values as lines
        lines[30:32] = [lines[30] + lines[31], b"   "]
    elif how == "an object across two lines":  # and two objects on another line
        lines[10:13] = [lines[10].replace(b"{", b"{\n", 1), lines[11] + lines[12]]
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize(
    "how",
    [
        "clean",
        "blank line",
        "crlf",
        "no final newline",
        "another run_id late",
        "tokens out of order",
        "two objects on a line",
        "an object across two lines",
    ],
)
def test_token_lines_checked_a_chunk_at_a_time_give_the_report_of_one_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The fast pass over the token lines decodes them a chunk at a time (memory flat in the run's
    length): chunks that cut the run anywhere, or lines longer than a chunk, give the same report
    as one chunk, and anything it does not vouch for goes to the line-by-line pass."""
    from inferoscope.bundle import meta_fast
    from inferoscope.bundle.lines import build_line_index

    run = write_synthetic_v02(tmp_path, "syn", 120, layers=LAYERS, experts=EXPERTS, top_k=TOP_K)
    if how != "clean":
        _token_lines_edited(run, how)
    whole = RunReader(run).validate().to_dict()
    for size in (64, 333, 4096):
        monkeypatch.setattr(meta_fast, "CHUNK_BYTES", size)
        reader = RunReader(run)
        assert reader.validate().to_dict() == whole
        fast = meta_fast.fast_meta_scan(reader.raw_path, reader.manifest, 100)
        assert (fast is not None) == (how == "clean")
        if fast is not None:
            assert fast.lines == 120 and fast.report.aggregates.duration_count == 120
            index = build_line_index(reader.raw_path)
            assert np.array_equal(fast.index.starts, index.starts)
            assert np.array_equal(fast.index.ends, index.ends)
    assert whole["ok"] == (how in ("clean", "blank line", "crlf", "no final newline"))  # those are allowed


@pytest.mark.parametrize("contract", ["v0.1", "v0.2"])
def test_a_check_that_keeps_no_series_counts_the_same_and_refuses_what_needs_them(
    tmp_path: Path, contract: str
) -> None:
    """``validate(series=False)`` (the CLI's check and the check beside a command) gives the same
    issues and counts; what needs the per-token series says so instead of answering wrongly."""
    from inferoscope.cli import EXAMPLE_RUN

    run = (
        write_synthetic_v02(tmp_path, "syn", 300, layers=LAYERS, experts=EXPERTS, top_k=TOP_K)
        if contract == "v0.2"
        else EXAMPLE_RUN
    )
    kept, dropped = RunReader(run).validate(), RunReader(run).validate(series=False)
    assert kept.to_dict() == dropped.to_dict() and kept.aggregates.events == dropped.aggregates.events
    for index, layer in kept.aggregates.layers.items():
        other = dropped.aggregates.layers[index]
        assert layer.to_dict() == other.to_dict() and other.token_parts == []
        layer.pair_counts()
        with pytest.raises(RuntimeError, match="per-token series"):
            other.token_series(kept.aggregates.events)
        if other.pairs_from_parts:
            with pytest.raises(RuntimeError, match="per-token series"):
                other.pair_counts()


def test_the_array_checks_read_only_a_few_blocks_ahead_of_the_loop_that_takes_them() -> None:
    """A slow consumer (a check sharing the cores with a command) must not let every block of a
    long run be read and held at once: the check's memory stays that of a few blocks."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from inferoscope.bundle import v02_validate

    lock = threading.Lock()
    started: list[int] = []

    def work(block: int) -> int:
        with lock:
            started.append(block)
        return block

    taken: list[int] = []
    most_waiting = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for block in v02_validate._in_order(pool, work, range(60)):
            time.sleep(0.002)
            taken.append(block)
            with lock:
                most_waiting = max(most_waiting, len(started) - len(taken))
    assert taken == list(range(60))
    assert most_waiting <= v02_validate.AHEAD
