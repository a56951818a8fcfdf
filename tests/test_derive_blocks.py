"""Derive a block of tokens at a time: the motifs, fits and ledger of the token-by-token rule,
byte for byte; the capped (approximate) matcher named and measured; bad runs refused clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from inferoscope import RunReader
from inferoscope.cli import EXAMPLE_RUN
from inferoscope.convert import convert_run
from inferoscope.derive import Derivation, _Clusters, derive_events, derive_inputs, write_derived
from inferoscope.derive_inputs import BLOCK_TOKENS
from inferoscope.json_stream import materialised
from inferoscope.jsonfmt import dumps_json_file
from inferoscope.motif_blocks import BlockClusters
from inferoscope.motif_helper import GLOBAL, HELPER_SLOWDOWN, MEASURED_BLOCKS, SplitClock, split_clusterings


def _fingerprints(kind: str, tokens: int, experts: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        logits = rng.standard_normal((tokens, experts))
    else:  # a dozen prototypes with noise: motifs that grow and drift
        protos = rng.standard_normal((12, experts)) * 2
        logits = protos[rng.integers(0, 12, tokens)] + 0.4 * rng.standard_normal((tokens, experts))
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9, 0.99])
def test_the_block_matcher_takes_every_decision_of_the_token_by_token_rule(
    kind: str, threshold: float
) -> None:
    probs = _fingerprints(kind, 700, 16, seed=3)
    prints = probs - 1.0 / probs.shape[1]
    reference = _Clusters("g_", threshold)
    expected = [reference.assign(prints[i], probs[i], i) for i in range(len(probs))]
    blocked = BlockClusters(threshold)
    got = []
    for start in range(0, len(probs), BLOCK_TOKENS):
        stop = min(len(probs), start + BLOCK_TOKENS)
        d = blocked.assign(prints[start:stop], probs[start:stop], np.arange(start, stop))
        got += [
            (f"g_{n:03d}", 1.0 if v else round(f, 6), v)
            for n, f, v in zip(d.numbers.tolist(), d.fits.tolist(), d.novel.tolist(), strict=True)
        ]
    assert got == expected
    assert blocked.ledger("g_") == reference.ledger()


def test_blocks_where_every_token_joins_are_settled_on_the_candidates_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-round path (every token joins a motif) is taken on a run with structure, and
    gives the decisions of the general loop, which is made to decide every block here."""
    probs = _fingerprints("structured", 1400, 16, seed=5)
    prints = probs - 1.0 / probs.shape[1]

    def decide_all(clusters: BlockClusters) -> list[tuple[list[int], list[float], list[bool]]]:
        out = []
        for start in range(0, len(probs), BLOCK_TOKENS):
            stop = min(len(probs), start + BLOCK_TOKENS)
            d = clusters.assign(prints[start:stop], probs[start:stop], np.arange(start, stop))
            out.append((d.numbers.tolist(), np.round(d.fits, 6).tolist(), d.novel.tolist()))
        return out

    taken = []
    one_round = BlockClusters._all_join

    def counted(self: BlockClusters, *args: object) -> object:
        result = one_round(self, *args)  # type: ignore[arg-type]
        taken.append(result is not None)
        return result

    monkeypatch.setattr(BlockClusters, "_all_join", counted)
    fast = BlockClusters(0.5)
    quick = decide_all(fast)
    assert sum(taken) >= len(taken) // 2  # most blocks of a run with structure
    monkeypatch.setattr(BlockClusters, "_all_join", lambda self, *args: None)
    general = BlockClusters(0.5)
    assert decide_all(general) == quick
    assert general.ledger("g_") == fast.ledger("g_")
    assert general.rounds == fast.rounds


def _one_by_one(run: Path, threshold: float | None) -> bytes:
    """The artifacts as the token-by-token matcher writes them (the independent reference)."""
    reader = RunReader(run)
    derivation = Derivation(reader.manifest or {}, threshold, one_by_one=True)
    lines = "".join(derivation.event_line(event) for event in derive_inputs(reader))
    ledger, contingency = (materialised(x) for x in derivation.artifacts())
    return (lines + dumps_json_file(ledger) + dumps_json_file(contingency)).encode()


def _written(run: Path) -> bytes:
    return b"".join(
        (run / name).read_bytes() for name in ("derived.ndjson", "motif_ledger.json", "contingency.json")
    )


@pytest.mark.parametrize("contract", ["v0.1", "v0.2"])
@pytest.mark.parametrize("threshold", [None, 0.5, 0.9])
def test_derive_writes_the_bytes_of_the_token_by_token_matcher(
    tmp_path: Path, contract: str, threshold: float | None
) -> None:
    run = tmp_path / "demo-run"
    if contract == "v0.1":
        shutil.copytree(EXAMPLE_RUN, run)
    else:
        run = convert_run(EXAMPLE_RUN, tmp_path, to="v0.2", dtype="float64").path
    expected = _one_by_one(run, threshold)
    summary = write_derived(run, threshold)
    assert _written(run) == expected
    assert summary["tokens"] == 200
    assert RunReader(run).validate().ok


def test_a_run_whose_tokens_carry_different_layers_is_matched_token_by_token() -> None:
    events = json.loads(
        "[" + ",".join((EXAMPLE_RUN / "raw_trace.ndjson").read_text().splitlines()[:40]) + "]"
    )
    manifest = json.loads((EXAMPLE_RUN / "manifest.json").read_text())
    events[7]["layers"] = events[7]["layers"][:3]  # one token lacks its last layer
    derived, ledger, _ = derive_events(manifest, events, 0.9)
    assert [len(e["derived_payload"]["layer_motifs"]) for e in derived].count(3) == 1
    assert ledger["ledger_payload"]["tokens"] == 40


def test_the_capped_matcher_is_named_and_equals_the_exact_one_while_motifs_fit_under_the_cap(
    tmp_path: Path,
) -> None:
    run = tmp_path / "demo-run"
    shutil.copytree(EXAMPLE_RUN, run)
    exact = _one_by_one(run, 0.9)
    summary = write_derived(run, 0.9, cap=10_000)
    assert summary["matcher"] == "motifs/online-cosine-0.90-cap10000"
    ledger = json.loads((run / "motif_ledger.json").read_text())["ledger_payload"]
    assert ledger["matching_rule"] == "motifs/online-cosine-0.90-cap10000"
    assert "10000 motifs with the most members" in ledger["similarity"]
    renamed = _written(run).replace(b"online-cosine-0.90-cap10000", b"online-cosine-0.90")
    assert renamed.replace(ledger["similarity"].encode(), b"cosine of router_probs minus uniform") == exact


def test_a_small_cap_keeps_only_that_many_candidates_and_reports_its_recall() -> None:
    probs = _fingerprints("random", 900, 16, seed=5)
    prints = probs - 1.0 / 16
    capped = BlockClusters(0.5, cap=32, audit=True)
    exact = BlockClusters(0.5)
    for start in range(0, 900, BLOCK_TOKENS):
        rows = slice(start, min(900, start + BLOCK_TOKENS))
        capped.assign(prints[rows], probs[rows], np.arange(900)[rows])
        exact.assign(prints[rows], probs[rows], np.arange(900)[rows])
    assert capped.audited == 900
    assert 0.0 < capped.agreed / capped.audited < 1.0  # it does miss some, and says how many
    assert capped.size >= exact.size  # a missed match founds a motif instead


def test_derive_cli_cap_is_refused_with_exact_and_below_one(tmp_path: Path) -> None:
    run = tmp_path / "demo-run"
    shutil.copytree(EXAMPLE_RUN, run)
    for extra in (["--exact", "--cap", "5"], ["--cap", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "inferoscope", "derive", str(run), *extra],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode != 0 and "--cap" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "inferoscope", "derive", str(run), "--cap", "8", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout)["matcher"] == "motifs/online-cosine-0.90-cap8"


def test_fits_are_written_with_the_digits_pythons_round_gives() -> None:
    """A block's fits are rounded at once; every one has round(fit, 6)'s digits, including
    those exactly at a half and those that round to minus zero; founders are written 1.0."""
    from inferoscope.derive import _fit_values
    from inferoscope.motif_blocks import BlockDecisions

    rng = np.random.default_rng(5)
    fits = np.concatenate(
        [
            rng.uniform(-1, 1, 50_000),
            rng.integers(-(10**6), 10**6, 5_000) / 1e6,
            (rng.integers(-(10**6), 10**6, 5_000) + 0.5) / 1e6,
            [0.0078125, -0.0, 1.0, -1.0, 4e-7, -4e-7, 5e-7, 0.9999995, 0.1234565],
        ]
    )
    novel = rng.random(fits.size) < 0.1
    written = _fit_values(BlockDecisions(np.zeros(fits.size, dtype=np.int64), fits, novel)).tolist()
    expected = [1.0 if v else round(f, 6) for f, v in zip(fits.tolist(), novel.tolist(), strict=True)]
    assert [repr(x) for x in written] == [repr(x) for x in expected]


def test_every_fit_numpy_writes_has_the_digits_repr_gives() -> None:
    """Every fit a line can hold with a point (|k| / 10**6 for 100 <= |k| <= 10**6) is written as
    ``repr`` writes it; closer to zero ``repr`` switches to an exponent, and the block is left to
    the line-by-line writer."""
    from inferoscope.derived_lines import _fit_digits

    k = np.arange(-(10**6), 10**6 + 1, dtype=np.int64)
    k = k[np.abs(k) >= 100]
    data, keep = _fit_digits(k)
    made = data[keep].tobytes().decode("ascii")
    lengths = keep.sum(axis=1)
    expected = [repr(v) for v in (k / 1e6).tolist()]
    assert lengths.tolist() == [len(e) for e in expected]
    assert made == "".join(expected)


def test_a_blocks_lines_made_at_once_are_its_lines_made_one_by_one() -> None:
    """The numpy line maker writes the bytes of the per-token writer: wide motif numbers and
    token indices, founders, layer indices of any width; a block it cannot write (a fit near
    zero, a negative token index) is written line by line, with the same bytes."""
    from inferoscope.derive import Derivation, _fit_values
    from inferoscope.derive_inputs import InputBlock
    from inferoscope.derived_lines import LineMaker
    from inferoscope.motif_blocks import BlockDecisions

    rng = np.random.default_rng(11)
    manifest = {"run_id": 'r\u00e9n "x"', "derivation_version": "motifs/v0.1.0-alpha"}
    layers = [0, 5, 17, 100]
    for case in ("plain", "wide", "near zero", "negative token"):
        count = 128
        derivation = Derivation(manifest, 0.5)
        top = 12_345 if case == "wide" else 90
        every = []
        for _ in range(len(layers) + 1):
            raw = rng.uniform(-1, 1, count)
            if case == "near zero":
                raw[7] = 4e-5
            novel = rng.random(count) < 0.2
            every.append(BlockDecisions(rng.integers(0, top, count), raw, novel))
        tokens = rng.integers(0, 10**12 if case == "wide" else 500, count)
        if case == "negative token":
            tokens[3] = -4
        fits = [_fit_values(d) for d in every]
        block = InputBlock(tokens, ["t"] * count, {})
        maker = LineMaker(derivation._head, derivation._tail, layers)
        made = maker.lines(tokens, [d.numbers for d in every], fits, [d.novel for d in every])
        one_by_one = derivation._one_by_one(block, layers, every, [f.tolist() for f in fits])
        if case in ("near zero", "negative token"):
            assert made is None
        else:
            assert made is not None and made.decode("ascii") == one_by_one
        for line in one_by_one.splitlines():
            json.loads(line)
    no_layers = LineMaker(derivation._head, derivation._tail, [])
    one = BlockDecisions(np.array([3]), np.array([0.91]), np.array([False]))
    made = no_layers.lines(np.array([9]), [one.numbers], [_fit_values(one)], [one.novel])
    assert made is not None and json.loads(made)["derived_payload"]["layer_motifs"] == []
    with warnings.catch_warnings():  # a fit that is not a number: no warning, the careful writer
        warnings.simplefilter("error")
        nan = [np.array([np.nan])]
        assert no_layers.lines(np.array([1]), [np.array([0])], nan, [np.array([False])]) is None


def _repeated_demo(folder: Path, times: int) -> Path:
    """The demo run's events repeated ``times`` times (token_index renumbered): a run long enough
    for derive to hand clusterings to its helper."""
    events = [json.loads(line) for line in (EXAMPLE_RUN / "raw_trace.ndjson").read_text().splitlines()]
    shutil.copytree(EXAMPLE_RUN, folder)
    for name in ("derived.ndjson", "motif_ledger.json", "contingency.json"):
        (folder / name).unlink(missing_ok=True)
    with (folder / "raw_trace.ndjson").open("w") as handle:
        for t in range(times * len(events)):
            event = dict(events[t % len(events)], token_index=t)
            handle.write(json.dumps(event, sort_keys=True) + "\n")
    return folder


@pytest.mark.parametrize("keys", ["measured", "measured v0.2", "global", "global and a layer", "two layers"])
def test_clusterings_handed_to_the_helper_mid_run_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    """The helper is forked after the first blocks, carrying the state of the clusterings it takes
    (whichever the measurement picks); the files are those of one process matching token by
    token."""
    import inferoscope.derive as derive_module
    from inferoscope.motif_helper import GLOBAL, MEASURED_BLOCKS

    run = _repeated_demo(tmp_path / "demo-run", 7)  # 1,400 tokens: 11 blocks
    if keys == "measured v0.2":
        run = convert_run(run, tmp_path / "v02", to="v0.2", dtype="float64").path
    taken: list[list[object]] = []
    if not keys.startswith("measured"):
        forced = {"global": [GLOBAL], "global and a layer": [GLOBAL, 2], "two layers": [0, 3]}[keys]
        monkeypatch.setattr(derive_module, "split_clusterings", lambda *_: forced)
    real = derive_module.MatchHelper

    def recorded(make: object, chosen: list[object]) -> object:
        taken.append(list(chosen))
        return real(make, chosen)  # type: ignore[arg-type]

    monkeypatch.setattr(derive_module, "MatchHelper", recorded)
    expected = _one_by_one(run, 0.9)
    summary = write_derived(run, 0.9)
    assert _written(run) == expected and summary["tokens"] == 1400
    if derive_module.can_fork_beside():
        assert len(taken) == 1 and taken[0]  # forked once, after the measured blocks
    assert (MEASURED_BLOCKS + 1) * BLOCK_TOKENS < 1400
    assert RunReader(run).validate().ok


def test_the_split_moves_clusterings_while_it_lowers_the_busier_side() -> None:
    from inferoscope.motif_helper import GLOBAL, split_clusterings

    demo = {0: 0.42, 1: 0.42, 2: 0.37, 3: 0.54, GLOBAL: 0.56}  # ms a block, measured
    assert split_clusterings(demo, 0.57, 1.25) == [GLOBAL, 3]
    olmoe = {**{layer: 0.65 for layer in range(16)}, GLOBAL: 8.2}  # no structure, 64 experts
    assert split_clusterings(olmoe, 2.4, 1.25)[0] == GLOBAL
    assert split_clusterings({0: 1.0}, 0.1, 1.25) == []  # one clustering: nothing to gain


def test_one_slow_block_before_the_split_does_not_sway_it() -> None:
    """The split is made from each clustering's median block: a block slowed by the check
    starting beside derive (or anything else on the machine) does not hand the helper a
    clustering that the usual blocks would keep here."""
    now = [0.0]
    clock = SplitClock(lambda: now[0])
    usual = {0: 0.25, 1: 0.25, 2: 0.2, 3: 0.24, GLOBAL: 0.3}  # ms a block, as measured
    for block in range(MEASURED_BLOCKS + 1):
        clock.block_starts()
        for key, cost in usual.items():
            with clock.timing(key):
                now[0] += cost * (60 if block == 3 and key == 2 else 1)  # one block of layer 2: slow
        now[0] += 0.5  # reading the block and writing the lines
    assert clock.measured
    assert clock.costs == pytest.approx(usual)
    assert clock.fixed == pytest.approx(0.5)
    assert split_clusterings(clock.costs, clock.fixed, HELPER_SLOWDOWN) == [GLOBAL, 0]
