"""Teacher-forced routing of given text (``inferoscope route``): batched equals one at a time,
padding is never recorded, an interrupted run resumes, bad input is one line and writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from inferoscope import RunReader
from inferoscope.capture import CaptureError, Document, route_corpus

from .tiny_models import save_tiny

TEXTS = [
    ("def f(x):\n    return x + 1", "code"),
    ("The quick brown fox jumps over the lazy dog, twice, and then once more.", "prose"),
    ("a", "prose"),
    ("for i in range(10): print(i)", "code"),
    ("Licensed under the Apache License, Version 2.0", "license"),
]


@pytest.fixture(scope="module", params=["olmoe", "qwen2_moe"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    folder = save_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), folder


def docs() -> list[Document]:
    return [Document(i, text, source) for i, (text, source) in enumerate(TEXTS)]


def arrays(run: Path, role: str) -> np.ndarray:
    reader = RunReader(run)
    assert reader.routing is not None
    values = reader.sidecar().whole(reader.routing.groups[0], role)
    assert values is not None
    return values


def test_batched_routing_equals_one_document_at_a_time(loaded: tuple[Any, Any, Path], tmp_path: Path) -> None:
    model, tokenizer, _ = loaded
    batched = route_corpus(model, tokenizer, docs(), out=tmp_path / "batched", batch=5)
    single = route_corpus(model, tokenizer, docs(), out=tmp_path / "single", batch=1)
    assert [p.name for p in batched.written] == [p.name for p in single.written]
    for a, b, (text, source) in zip(batched.written, single.written, TEXTS, strict=True):
        reader = RunReader(a)
        assert reader.validate().ok and reader.manifest is not None
        assert reader.manifest["run_kind"] == "teacher_forced"
        ids = tokenizer(text)["input_ids"]
        assert len(reader) == len(ids)  # every position, and no padding row
        event = reader.token_event(len(ids) - 1)
        assert (event.token_id, event.source, event.context_length) == (ids[-1], source, len(ids))
        assert np.array_equal(arrays(a, "selected"), arrays(b, "selected"))
        assert np.allclose(arrays(a, "scores"), arrays(b, "scores"), atol=1e-5)
        assert np.allclose(arrays(a, "weights"), arrays(b, "weights"), atol=1e-5)


def test_an_interrupted_run_leaves_whole_bundles_and_a_rerun_continues(
    loaded: tuple[Any, Any, Path], tmp_path: Path
) -> None:
    model, tokenizer, _ = loaded

    def stops_after_two() -> Iterator[Document]:
        for document in docs():
            if document.index == 2:
                raise KeyboardInterrupt
            yield document

    with pytest.raises(KeyboardInterrupt):
        route_corpus(model, tokenizer, stops_after_two(), out=tmp_path, batch=1)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["doc-000000", "doc-000001"]  # nothing half-written, nothing hidden left over
    assert all(RunReader(tmp_path / name).validate().ok for name in written)
    again = route_corpus(model, tokenizer, docs(), out=tmp_path, batch=2)
    assert len(again.skipped) == 2 and len(again.written) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"doc-{i:06d}" for i in range(5)]


def test_a_rerun_keeps_only_runs_of_the_same_document_routed_the_same_way(
    loaded: tuple[Any, Any, Path], tmp_path: Path
) -> None:
    """A resumed route matches each kept run by its text's fingerprint and the settings; another
    corpus (or other settings) in the same folder is refused, never silently kept."""
    model, tokenizer, _ = loaded
    route_corpus(model, tokenizer, docs()[:2], out=tmp_path, batch=2)
    reversed_docs = [Document(i, text, source) for i, (text, source) in enumerate(reversed(TEXTS))]
    with pytest.raises(CaptureError, match=r"doc-000000 is not document 0 of this corpus.*its text"):
        route_corpus(model, tokenizer, reversed_docs, out=tmp_path, batch=2)
    with pytest.raises(CaptureError, match=r"max_tokens_per_doc \(None, now 3\)"):
        route_corpus(model, tokenizer, docs(), out=tmp_path, batch=2, max_tokens_per_doc=3)
    again = route_corpus(model, tokenizer, docs(), out=tmp_path, batch=2)  # the same corpus: continues
    assert len(again.skipped) == 2 and len(again.written) == 3


@pytest.mark.parametrize("what", ["stranger", "bundle", "file"])
def test_out_must_be_new_empty_or_an_earlier_route(
    loaded: tuple[Any, Any, Path], tmp_path: Path, what: str
) -> None:
    model, tokenizer, _ = loaded
    out = tmp_path / "out"
    if what == "file":
        out.write_text("x")
    else:
        out.mkdir()
        (out / ("readme.txt" if what == "stranger" else "manifest.json")).write_text("{}")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    message = {"stranger": "not runs of a route (first: 'readme.txt')", "bundle": "is a run bundle",
               "file": "is a file"}[what]  # fmt: skip
    with pytest.raises(CaptureError, match=re.escape(message)):
        route_corpus(model, tokenizer, docs(), out=out)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INFEROSCOPE_DEBUG"}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "inferoscope", "route", *args, "--device", "cpu"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)


def test_cli_routes_a_jsonl_corpus_with_sources(loaded: tuple[Any, Any, Path], tmp_path: Path) -> None:
    _model, _tokenizer, folder = loaded
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"text": "import os", "domain": "code"}\n\n{"text": "Hello there.", "domain": "prose"}\n'
    )
    result = cli(
        "--model",
        str(folder),
        "--jsonl",
        str(corpus),
        "--source-field",
        "domain",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 0, result.stderr
    assert "of 2 documents" in result.stdout
    sources = [RunReader(p).token_event(0).source for p in sorted((tmp_path / "o").iterdir())]
    assert sources == ["code", "prose"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"body": "x"}\n', "line 2: has no field 'text'"),
        ('{"text": "ok"}\nnot json\n', "line 2: invalid JSON"),
        ('{"text": 7}\n', "line 1: field 'text' is an integer, not text"),
        ('{"text": "ok", "domain": null}\n', "line 1: source field 'domain' is null, not text"),
        ('{"text": "ok"}\n', "line 1: has no source field 'domain'"),
        ("\n\n", "holds no documents"),
    ],
)
def test_a_bad_corpus_line_is_one_line_and_nothing_is_written(
    loaded: tuple[Any, Any, Path], tmp_path: Path, content: str, message: str
) -> None:
    _model, _tokenizer, folder = loaded
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(content)
    extra = ["--source-field", "domain"] if "domain" in message else []
    result = cli("--model", str(folder), "--jsonl", str(corpus), "--out", str(tmp_path / "o"), *extra)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_text_file_is_split_at_blank_lines(loaded: tuple[Any, Any, Path], tmp_path: Path) -> None:
    _model, _tokenizer, folder = loaded
    corpus = tmp_path / "notes.txt"
    corpus.write_text("first paragraph\nstill the first\n\n\nsecond one\n")
    result = cli(
        "--model", str(folder), "--text", str(corpus), "--source", "notes", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "o").iterdir())
    assert len(runs) == 2 and RunReader(runs[1]).token_event(0).source == "notes"


def test_ctrl_c_says_what_was_kept_and_how_to_continue(loaded: tuple[Any, Any, Path], tmp_path: Path) -> None:
    import signal
    import time

    _model, _tokenizer, folder = loaded
    corpus = tmp_path / "many.txt"
    corpus.write_text("\n\n".join(f"document number {i} " * 20 for i in range(3000)) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "INFEROSCOPE_DEBUG"}
    env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "o"
    command = [sys.executable, "-m", "inferoscope", "route", "--model", str(folder), "--text", str(corpus)]
    process = subprocess.Popen(
        [*command, "--out", str(out), "--device", "cpu", "--batch", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and any(out.glob("doc-*"))):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted after" in stderr and "run the same command again to continue" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    runs = sorted(out.glob("doc-*"))
    assert runs and all(RunReader(run).validate().ok for run in runs)
