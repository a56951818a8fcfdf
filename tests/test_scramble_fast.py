"""The streamed v0.1.0 scramble writes the event-by-event scramble's bytes, in flat memory; what it
cannot write that way goes event by event; a source that is not clean leaves nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

import inferoscope.scramble_v01 as fast_module
from inferoscope import RunReader
from inferoscope.bundle.errors import RunBundleError
from inferoscope.cli import EXAMPLE_RUN
from inferoscope.extraction import MoELayerCaptureInput, build_token_complete_event
from inferoscope.scramble import scramble_bundle

from .conftest import make_bundle_parts, write_raw_bundle


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (a v0.2 bundle's arrays included), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _both(
    run: Path, out: Path, variant: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """(the streamed twin, the event-by-event twin) of ``run``."""
    used: list[str] = []
    real = fast_module._write

    def spy(*args: object, **kwargs: object) -> Path:
        made = real(*args, **kwargs)  # type: ignore[arg-type]
        used.append("streamed")
        return made

    monkeypatch.setattr(fast_module, "_write", spy)
    streamed = scramble_bundle(run, out / "streamed", variant, seed=seed)
    assert used == ["streamed"]

    def refuse(*_args: object, **_kwargs: object) -> Path:
        raise fast_module.Unusual

    monkeypatch.setattr(fast_module, "scramble_v01_fast", refuse)
    by_event = scramble_bundle(run, out / "by-event", variant, seed=seed)
    return streamed, by_event


def _route(events: list[Any], logits: np.ndarray, top_k: int) -> None:
    """Every event's layers routed anew from ``logits`` ``[tokens, layers, experts]``."""
    for t, event in enumerate(events):
        event["layers"] = build_token_complete_event(
            run_id=event["run_id"],
            token_index=event["token_index"],
            token_id=event["token_id"],
            token_text=event["token_text"],
            context_length=event["context_length"],
            decode_start_ms=event["timing_ms"]["decode_start"],
            decode_end_ms=event["timing_ms"]["decode_end"],
            layer_inputs=[
                MoELayerCaptureInput(i, logits[t, i].tolist(), top_k) for i in range(logits.shape[1])
            ],
        )["layers"]


def _compact_copy(tmp_path: Path) -> Path:
    """A run written by another writer (msgspec: no spaces, probabilities below 1e-4 written
    positionally), so the twin must be re-encoded, not copied."""
    manifest, events, layout = make_bundle_parts(tokens=60, layers=3, experts=64, top_k=4, seed=4)
    _route(events, np.random.default_rng(9).standard_normal((60, 3, 64)) * 4, 4)  # peaked routers
    assert any(p < 1e-4 for e in events for la in e["layers"] for p in la["router_probs"])
    lines = [msgspec.json.encode(e).decode() for e in events]
    return write_raw_bundle(tmp_path / "compact", manifest, events, layout, lines)


@pytest.mark.parametrize("halves", [False, True])
@pytest.mark.parametrize("variant", ["tokens", "experts"])
@pytest.mark.parametrize("source", ["demo", "compact"])
def test_the_streamed_twin_is_the_event_by_event_twin_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, source: str, halves: bool
) -> None:
    """In one process, or in two halves (the second written by a forked process)."""
    run = EXAMPLE_RUN if source == "demo" else _compact_copy(tmp_path)
    started = _split_everything(monkeypatch) if halves else []
    streamed, by_event = _both(run, tmp_path, variant, 5, monkeypatch)
    # tokens: one forked process gathers the second half, one assembles it
    assert len(started) == (0 if not halves else 2 if variant == "tokens" else 1)
    assert _files(streamed) == _files(by_event)
    assert RunReader(streamed).validate().ok
    assert not list((tmp_path / "streamed").glob(".*")), "no spill or staging folder is left"


def test_an_integer_in_a_float_column_goes_event_by_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, events, layout = make_bundle_parts(tokens=20, layers=2, experts=4, top_k=1, seed=1)
    events[7]["layers"][1]["router_probs"] = [0, 1, 0, 0]  # a one-hot router, written as integers
    layer = events[7]["layers"][1]
    layer.update(
        topk_indices=[1], topk_probs=[1], top1_prob=1, top1_top2_margin=1, entropy=0, normalized_entropy=0
    )
    run = write_raw_bundle(tmp_path / "run", manifest, events, layout)
    assert RunReader(run).validate().ok
    with pytest.raises(fast_module.Unusual):
        fast_module.scramble_v01_fast(
            RunReader(run),
            json.loads((run / "manifest.json").read_text()),
            layout,
            tmp_path / "x",
            "tokens",
            0,
        )
    twin = scramble_bundle(run, tmp_path / "out", "tokens", seed=0)  # event by event, as ever
    assert RunReader(twin).validate().ok


def test_a_source_that_is_not_clean_gets_its_issues_and_leaves_nothing(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=30, layers=2, experts=8, seed=2)
    events[12]["token_index"] = 11  # a repeated token index
    run = write_raw_bundle(tmp_path / "run", manifest, events, layout)
    for variant in ("tokens", "experts"):
        out = tmp_path / f"out-{variant}"
        with pytest.raises(RunBundleError) as raised:
            scramble_bundle(run, out, variant, seed=0)
        assert "duplicate_raw_token_index" in raised.value.counts
        assert not out.exists() or list(out.iterdir()) == []


def test_a_v02_token_scramble_is_the_same_whatever_its_spill_buckets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inferoscope.scramble_v02 as v02
    from inferoscope.synthetic import write_synthetic_v02

    run = write_synthetic_v02(tmp_path / "src", "syn", 300, layers=3, experts=16, top_k=4, seed=3)
    one = scramble_bundle(run, tmp_path / "one", "tokens", seed=2)
    monkeypatch.setattr(v02, "BUCKET_TOKENS", 7)  # 43 buckets, the last one short
    many = scramble_bundle(run, tmp_path / "many", "tokens", seed=2)
    monkeypatch.delattr(os, "O_DIRECT", raising=False)  # the spill through the page cache
    cached = scramble_bundle(run, tmp_path / "cached", "tokens", seed=2)

    assert _tree(one) == _tree(many) == _tree(cached)
    assert RunReader(many).validate().ok
    assert not [p for p in (tmp_path / "many").iterdir() if p.name.startswith(".")]


def test_a_layer_is_written_as_json_dumps_writes_it_whatever_its_numbers() -> None:
    rng = np.random.default_rng(11)
    for scale in (0.5, 4.0, 12.0):  # flat to sharply peaked: probabilities far below 1e-4
        logits = rng.standard_normal((40, 32)) * scale
        for t in range(40):
            layer = build_token_complete_event(
                run_id="r",
                token_index=t,
                token_id=t,
                token_text="x",
                context_length=1 + t,
                decode_start_ms=0.0,
                decode_end_ms=1.0,
                layer_inputs=[MoELayerCaptureInput(3, logits[t].tolist(), 4)],
            )["layers"][0]
            assert fast_module.layer_text(layer) == json.dumps(layer, sort_keys=True)
    odd = dict(layer, entropy=2.5e16, top1_prob=0.0, router_probs=[0.0, 1e-300, 0.5, 1.0])
    assert fast_module.layer_text(odd) == json.dumps(odd, sort_keys=True)


def _peaked_parts(tokens: int, seed: int) -> tuple[Any, list[Any], Any]:
    """A run of sharply peaked routers: many probabilities below 1e-4, in exponent form."""
    manifest, events, layout = make_bundle_parts(tokens=tokens, layers=3, experts=16, top_k=2, seed=seed)
    _route(events, np.random.default_rng(seed).standard_normal((tokens, 3, 16)) * 5, 2)
    return manifest, events, layout


@pytest.mark.parametrize("variant", ["tokens", "experts"])
def test_numbers_not_written_as_repr_are_written_anew_where_a_cheap_look_can_tell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """Exponents without their padding or in capitals, and numbers below 1e-4 without one (as
    msgspec writes them), are seen and the entry is written anew: the twin is the
    event-by-event twin byte for byte."""
    manifest, events, layout = _peaked_parts(60, 5)
    lines = []
    for i, event in enumerate(events):
        line = json.dumps(event, sort_keys=True)
        if i % 3 == 1:
            line = line.replace("e-05", "e-5").replace("e-06", "E-6")
        elif i % 3 == 2:
            line = msgspec.json.encode(event).decode().replace(",", ", ").replace(":", ": ")
        lines.append(line)
    text = "".join(lines)
    assert "e-5" in text and "E-6" in text and "0.0000" in text and "e-07" in text
    run = write_raw_bundle(tmp_path / "odd", manifest, events, layout, lines)
    assert RunReader(run).validate().ok
    streamed, by_event = _both(run, tmp_path, variant, 8, monkeypatch)
    assert _files(streamed) == _files(by_event)


def test_a_number_with_a_trailing_zero_keeps_its_text_and_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a cheap look cannot tell (digits repr would not write) keeps the source's text: the
    twin holds the same floats as the event-by-event twin."""
    manifest, events, layout = make_bundle_parts(tokens=30, layers=2, experts=4, top_k=1, seed=3)
    lines = [json.dumps(e, sort_keys=True) for e in events]
    # the first entries teach the writer the shape; later ones carry the extra zero
    lines[10:] = [re.sub(r'("entropy": [0-9]+\.[0-9]+),', r"\g<1>0,", line) for line in lines[10:]]
    assert all('0, "layer_index"' in line for line in lines[10:])
    run = write_raw_bundle(tmp_path / "zeros", manifest, events, layout, lines)
    assert RunReader(run).validate().ok
    streamed, by_event = _both(run, tmp_path, "tokens", 1, monkeypatch)
    ours = (streamed / "raw_trace.ndjson").read_text().splitlines()
    theirs = (by_event / "raw_trace.ndjson").read_text().splitlines()
    assert [json.loads(a) for a in ours] == [json.loads(b) for b in theirs]
    assert ours != theirs


@pytest.mark.parametrize("variant", ["tokens", "experts"])
@pytest.mark.parametrize("first", [True, False])
def test_what_is_kept_does_not_depend_on_which_entry_came_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, first: bool
) -> None:
    """Entries with digits repr would not write keep them wherever they lie in the run (before or
    after entries that teach the shape), so a twin written in two halves, whose second half
    learns anew, is the twin of one process."""
    manifest, events, layout = make_bundle_parts(tokens=30, layers=2, experts=4, top_k=1, seed=3)
    lines = [json.dumps(e, sort_keys=True) for e in events]
    odd = range(0, 12) if first else range(18, 30)
    for i in odd:
        lines[i] = re.sub(r'("entropy": [0-9]+\.[0-9]+),', r"\g<1>0,", lines[i])
    run = write_raw_bundle(tmp_path / "zeros", manifest, events, layout, lines)
    one = scramble_bundle(run, tmp_path / "one", variant, seed=1)
    _split_everything(monkeypatch)
    two = scramble_bundle(run, tmp_path / "two", variant, seed=1)
    assert _tree(one) == _tree(two)
    kept = (one / "raw_trace.ndjson").read_text().count('0, "layer_index"')
    assert kept == sum(line.count('0, "layer_index"') for line in lines) > 0


def test_a_helper_that_dies_leaves_its_half_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _compact_copy(tmp_path)
    reference = {
        v: _files(scramble_bundle(run, tmp_path / f"ref-{v}", v, seed=2)) for v in ("tokens", "experts")
    }
    _split_everything(monkeypatch)

    def die(*_args: object) -> None:
        os._exit(9)  # no word sent back

    for name in ("_gather_half", "_assemble_half", "_experts_second_half"):
        with monkeypatch.context() as patched:
            patched.setattr(fast_module, name, die)
            variant = "experts" if name == "_experts_second_half" else "tokens"
            made = scramble_bundle(run, tmp_path / name, variant, seed=2)
            assert _files(made) == reference[variant], name
    assert not multiprocessing.active_children()


def test_a_killed_scramble_leaves_a_spill_the_next_one_sweeps(tmp_path: Path) -> None:
    out = tmp_path / "twins"
    stale = out / ".scramble-999999999-abc"  # no such process
    stale.mkdir(parents=True)
    (stale / "layers").write_bytes(b"x")
    os.utime(stale, (0, 0))
    live = out / f".scramble-{os.getpid()}-def"  # a writer still at work
    live.mkdir()
    scramble_bundle(EXAMPLE_RUN, out, "tokens", seed=0)
    assert not stale.exists() and live.is_dir()


def test_a_twin_spills_beside_itself_even_where_its_folder_is_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in the system's temporary folder (often memory); a failed scramble removes the folders
    it made."""
    import inferoscope.bundle.writer as writer_module

    seen: list[Path] = []
    real = writer_module.spill_folder

    @contextlib.contextmanager
    def spy(root: Path, name: str) -> Iterator[Path]:
        with real(root, name) as folder:
            seen.append(folder)
            yield folder

    monkeypatch.setattr(fast_module, "spill_folder", spy)
    out = tmp_path / "new" / "twins"
    made = scramble_bundle(EXAMPLE_RUN, out, "tokens", seed=0)
    assert seen[0].parent == out == made.parent and not seen[0].exists()

    def refuse(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fast_module, "write_prepared_bundle", refuse)
    with pytest.raises(OSError):
        scramble_bundle(EXAMPLE_RUN, tmp_path / "other" / "twins", "experts", seed=0)
    assert not (tmp_path / "other").exists()


def _relaid(event: dict[str, Any]) -> str:
    """An event whose first layer entry has its keys sorted but "layer_index" last."""
    layer = event["layers"][0]
    keys = [k for k in sorted(layer) if k != "layer_index"] + ["layer_index"]
    text = "{" + ", ".join(f'"{k}": {json.dumps(layer[k])}' for k in keys) + "}"
    return json.dumps(event, sort_keys=True).replace(json.dumps(layer, sort_keys=True), text)


ODD_LINES = {
    "layer_index last": lambda lines, events: {3: _relaid(events[3])},
    "layer_index twice (the last counts)": lambda lines, events: {
        3: lines[3].replace('{"entropy"', '{"layer_index": 1, "entropy"', 1)
    },
    "a lone surrogate escape in token_text": lambda lines, events: {
        2: lines[2].replace('" tok2"', '"\\ud800x"')
    },
    "integers written -0": lambda lines, events: {
        i: line.replace('"layer_index": 0,', '"layer_index": -0,') for i, line in enumerate(lines)
    },
}


@pytest.mark.parametrize("variant", ["tokens", "experts"])
@pytest.mark.parametrize("odd", sorted(ODD_LINES))
def test_entries_the_text_cannot_vouch_for_are_written_as_the_event_by_event_scramble_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, odd: str
) -> None:
    """Valid runs a text look could misread (found by review): the index is taken from the
    decoded entry, a line msgspec refuses is read as the reader reads it, and an integer -0 is
    written 0: the twin is the event-by-event twin byte for byte, and valid."""
    manifest, events, layout = make_bundle_parts(tokens=8, layers=2, experts=4, top_k=2, seed=2)
    lines = [json.dumps(e, sort_keys=True) for e in events]
    for i, line in ODD_LINES[odd](lines, events).items():
        lines[i] = line
    run = write_raw_bundle(tmp_path / "odd", manifest, events, layout, lines)
    assert RunReader(run).validate().ok
    streamed, by_event = _both(run, tmp_path, variant, 4, monkeypatch)
    assert _files(streamed) == _files(by_event)
    assert RunReader(streamed).validate().ok


def _split_everything(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every run is written in two halves; returns the forked helpers started."""
    started: list[object] = []
    real = fast_module.ForkedCall

    def counted(*args: Any) -> Any:
        helper = real(*args)
        started.append(helper)
        return helper

    monkeypatch.setattr(fast_module, "HALVES_FROM_BYTES", 1)
    monkeypatch.setattr(fast_module, "ForkedCall", counted)
    monkeypatch.setattr(fast_module, "can_fork_beside", lambda: True)  # two cores; threads other tests left
    return started


def test_when_the_first_half_is_not_what_the_second_assumed_this_process_writes_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blank line in the first half: the forked half skipped one line's draws too many, so its
    text is dropped and the second half is written here, from the right draws."""
    manifest, events, layout = make_bundle_parts(tokens=40, layers=3, experts=16, top_k=2, seed=2)
    lines = [json.dumps(e, sort_keys=True) for e in events]
    lines.insert(3, "")
    run = write_raw_bundle(tmp_path / "blank", manifest, events, layout, lines)
    started = _split_everything(monkeypatch)
    streamed, by_event = _both(run, tmp_path, "experts", 2, monkeypatch)
    assert len(started) == 1
    assert _files(streamed) == _files(by_event)


def test_draws_skipped_in_bulk_leave_the_generator_where_drawing_them_one_by_one_does() -> None:
    one_by_one, bulk = np.random.default_rng(11), np.random.default_rng(11)
    base = np.tile(np.arange(64), (16, 1))
    for _ in range(4400):  # 70,400 permutations: more than one bulk call holds
        one_by_one.permuted(base, axis=1)
    fast_module._skip_draws(bulk, 4400 * 16, 64)
    assert np.array_equal(one_by_one.permuted(base, axis=1), bulk.permuted(base, axis=1))


@pytest.mark.parametrize(("rows", "width"), [(1, 1), (5, 2), (300, 3), (2000, 64), (40, 300)])
def test_rows_shuffled_in_place_are_the_rows_permuted_draws_and_leave_the_generator_alike(
    rows: int, width: int
) -> None:
    """The twins' labels: the same permutations as ``permuted`` of a fresh copy, in any type."""
    from inferoscope.permutations import shuffled_rows

    copied, in_place = np.random.default_rng(rows + width), np.random.default_rng(rows + width)
    expected = copied.permuted(
        np.tile(np.arange(width, dtype=np.int8 if width < 128 else np.int16), (rows, 1)), axis=1
    )
    assert np.array_equal(shuffled_rows(in_place, rows, width), expected)
    assert in_place.bit_generator.state == copied.bit_generator.state


def _plain_look(text: bytes, entries: int = 1) -> bool:
    """The cheap look at an entry's numbers, as its docstring defines it."""
    if b"0.0000" in text:
        return False
    if b"-0," in text or b"-0]" in text:
        return False
    return (
        text.count(b"e") == fast_module._KEY_ES * entries
        or fast_module._NOT_REPR_EXPONENT.search(text) is None
    )


def test_the_cheap_look_at_numbers_is_its_plain_definition_on_any_text() -> None:
    """What a twin keeps as text depends on this look (a number repr would not write keeps its
    text only where the look passes), so its searches must be the plain ones, exactly."""
    import random

    chosen = random.Random(7)
    alphabet = b"e0123456789+-.,]x"
    cases = [b"0.0000", b".00001", b"10.00001", b"[-0]", b"[-0, 1]", b"1e-05,-0.5]", b"0.00001", b"-0.0"]
    cases += [bytes(chosen.choice(alphabet) for _ in range(chosen.randint(1, 14))) for _ in range(40000)]
    for text in cases:
        assert fast_module._numbers_as_repr(text) == _plain_look(text), text


@pytest.mark.parametrize("kernel", ["copies", "stops short", "refuses midway", "missing"])
def test_a_half_written_elsewhere_is_appended_whole_whatever_the_kernel_copy_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    import errno

    import inferoscope.bundle.writer as writer_module

    part = tmp_path / "part"
    part.write_bytes(bytes(range(256)) * 300)
    real = os.copy_file_range
    calls: list[int] = []

    def copy(source: int, target: int, count: int, *rest: Any) -> int:
        calls.append(count)
        if kernel == "stops short":
            return 0 if len(calls) > 1 else real(source, target, 100)
        if kernel == "refuses midway" and len(calls) > 1:
            raise OSError(errno.EXDEV, "cross-device")
        return real(source, target, min(count, 1000))

    if kernel == "missing":
        monkeypatch.delattr(os, "copy_file_range")
    else:
        monkeypatch.setattr(os, "copy_file_range", copy)
    target = tmp_path / "trace"
    with target.open("wb") as handle:
        handle.write(b"head")
        writer_module.append_file(handle, part)
        handle.write(b"tail")
    assert target.read_bytes() == b"head" + part.read_bytes() + b"tail"


@pytest.mark.parametrize("variant", ["tokens", "experts"])
def test_a_v02_twin_reads_its_token_lines_in_order_past_blank_and_crlf_lines(
    tmp_path: Path, variant: str
) -> None:
    """The token lines are read in order without an index: blank lines, whitespace lines and CRLF
    ends in the source give the twin of the same source without them."""
    from inferoscope.synthetic import write_synthetic_v02

    plain = write_synthetic_v02(tmp_path / "plain", "syn", 300, layers=3, experts=16, top_k=4, seed=3)
    spaced = tmp_path / "spaced" / "syn"
    spaced.parent.mkdir()
    shutil.copytree(plain, spaced)
    lines = (spaced / "raw_trace.ndjson").read_bytes().split(b"\n")
    (spaced / "raw_trace.ndjson").write_bytes(
        b"\n" + b"\n \t\n".join(line + b"\r" for line in lines[:150]) + b"\n\n" + b"\n".join(lines[150:])
    )
    assert RunReader(spaced).validate().ok
    one = scramble_bundle(plain, tmp_path / "one", variant, seed=2)
    two = scramble_bundle(spaced, tmp_path / "two", variant, seed=2)
    assert _tree(one) == _tree(two)
