"""The command line as a person (or a script) uses it: exit codes, one-line errors, safe text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FIXTURES, INVALID, VALID, make_bundle_parts, write_raw_bundle

B = VALID / "b_olmoe_64tok_16x64_top8"
ORIGINAL_KEYS = {
    "run_id",
    "created_at",
    "model_id",
    "tokenizer_id",
    "raw_events",
    "layers",
    "layer_expert_counts",
    "optional_artifacts",
    "prompt_text",
    "decode_duration_ms",
}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )


def test_compat_inspect_is_byte_identical_to_the_original() -> None:
    assert run("inferoscope.inspect", str(B)).stdout == (FIXTURES / "inspect_b.txt").read_text()
    assert run("inferoscope.inspect", "--json", str(B)).stdout == (FIXTURES / "inspect_b.json").read_text()


def test_compat_inspect_exit_codes() -> None:
    bad = run("inferoscope.inspect", str(INVALID / "topk_prob_mismatch"))
    assert bad.returncode == 1 and "topk_prob_mismatch" in bad.stderr and bad.stdout == ""
    assert run("inferoscope.inspect").returncode == 2
    missing = run("inferoscope.inspect", "/no/such/run")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_inspect_shows_provenance_layers_and_a_clean_verdict_piped() -> None:
    result = run("inferoscope", "inspect", str(B))
    assert result.returncode == 0
    out = result.stdout
    for text in (
        "olmoe-64tok-seed7",
        "allenai/OLMoE-1B-7B-0125",
        "The quick brown fox",
        "validation: clean",
        "Per-layer routing",
        "12.875",
    ):
        assert text in out
    assert "\x1b" not in out
    assert all(ord(ch) < 128 for ch in out.replace("—", "")), "piped output uses ASCII boxes"


def test_inspect_json_keeps_every_original_key_and_adds_ours() -> None:
    data = json.loads(run("inferoscope", "inspect", "--json", str(B)).stdout)
    original = json.loads((FIXTURES / "inspect_b.json").read_text())
    assert {k: data[k] for k in ORIGINAL_KEYS} == original
    assert data["validation"] == {"ok": True, "issue_count": 0, "error_count": 0, "counts_by_code": {}}
    layer0 = data["layer_stats"][0]
    assert sum(layer0["expert_load"]) == 64 * 8 and layer0["num_active_experts"] == 8


def test_inspect_of_a_broken_bundle_still_summarises_and_exits_1() -> None:
    result = run("inferoscope", "inspect", str(INVALID / "decode_duration_mismatch"))
    assert result.returncode == 1
    assert "decode_duration_mismatch" in result.stdout and "1 issue" in result.stdout


def test_validate_lists_every_issue_with_its_location_and_exits_1() -> None:
    result = run("inferoscope", "validate", str(INVALID / "schema__probability_above_one"))
    assert result.returncode == 1
    for code in (
        "schema_violation",
        "router_probs_sum_mismatch",
        "topk_prob_mismatch",
        "top1_prob_mismatch",
        "entropy_mismatch",
        "normalized_entropy_mismatch",
    ):
        assert code in result.stdout
    assert "raw_trace.ndjson line 1, token 0, layer 0" in result.stdout


def test_validate_clean_bundles_exit_0_and_json_is_complete() -> None:
    result = run(
        "inferoscope", "validate", "--json", str(VALID / "a_readme_demo"), str(VALID / "e_empty_raw_trace")
    )
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert [b["ok"] for b in data["bundles"]] == [True, True]
    assert [b["events"] for b in data["bundles"]] == [1, 0]


def test_validate_max_issues_caps_what_is_shown_but_counts_everything(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=30)
    for event in events:
        event["timing_ms"]["decode_duration"] = 1000.0
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    data = json.loads(run("inferoscope", "validate", "--json", "--max-issues", "5", str(folder)).stdout)
    bundle = data["bundles"][0]
    assert bundle["issue_count"] == 30 and len(bundle["issues"]) == 5 and bundle["truncated"]
    text = run("inferoscope", "validate", "--max-issues", "5", str(folder)).stdout
    assert "25 more not shown" in text


@pytest.mark.parametrize(
    "args",
    [["validate", "/no/such/run"], ["inspect", "/no/such/run"], ["validate", "--max-issues", "-1", str(B)]],
)
def test_unreadable_input_is_one_line_on_stderr_and_exit_2(args: list[str]) -> None:
    result = run("inferoscope", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


LONG = "/no/such/" + "deeply-nested-folder/" * 8 + "run"


@pytest.mark.parametrize(
    "args",
    [
        ["validate", LONG],
        ["inspect", LONG],
        ["compare", LONG, LONG],
        ["export", LONG, "--parquet", "x.parquet"],
        ["derive", LONG],
        ["tui", LONG],
        ["tui", str(B), "--compare", LONG],
    ],
)
def test_every_error_is_one_line_whatever_the_width(args: list[str], tmp_path: Path) -> None:
    for columns in ("40", "80", "300"):
        result = subprocess.run(
            [sys.executable, "-m", "inferoscope", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": columns},
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "deeply-nested-folder/run" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert run("inferoscope").returncode == 2
    assert run("inferoscope", "frobnicate").returncode == 2


def test_hostile_bundle_text_never_reaches_the_terminal(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=2, run_id="evil")
    manifest["model_id"] = "[bold red]x[/] \x1b[2J\x1b]52;c;SGVsbG8=\x07"
    manifest["prompt"]["text"] = "line1\nline2\ttab \u202e"
    events[0]["run_id"] = "\x1b[31mred"
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    for args in (
        ["inferoscope", "inspect", str(folder)],
        ["inferoscope", "validate", str(folder)],
        ["inferoscope.inspect", str(folder)],
    ):
        result = run(*args, env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
        for stream in (result.stdout, result.stderr):
            assert "\x1b[2J" not in stream and "\x1b]52" not in stream and "\x07" not in stream
            assert "\u202e" not in stream and "\x1b[31mred" not in stream
    shown = run("inferoscope", "inspect", str(folder)).stdout
    assert "[bold red]x[/]" in shown and "\\x1b[2J" in shown and "\\x1b]52;c;SGVsbG8=\\x07" in shown
    assert "line1\\nline2\\ttab \\u202e" in shown


def test_no_color_gives_no_colour_codes() -> None:
    result = run(
        "inferoscope",
        "validate",
        str(INVALID / "run_id_mismatch"),
        env={"FORCE_COLOR": "1", "NO_COLOR": "1", "TERM": "xterm-256color"},
    )
    assert result.returncode == 1
    assert "\x1b[31" not in result.stdout and "\x1b[32" not in result.stdout and "38;" not in result.stdout


def test_every_option_and_argument_has_help_text() -> None:
    from inferoscope.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"inferoscope {name} {action.option_strings or action.dest}"


def test_export_creates_its_folder_and_refuses_a_target_inside_the_bundle(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "x.parquet"
    result = run("inferoscope", "export", str(B), "--parquet", str(out))
    assert result.returncode == 0, result.stderr and out.is_file()
    bundle = tmp_path / "b"
    __import__("shutil").copytree(B, bundle)
    before = (bundle / "raw_trace.ndjson").read_bytes()
    inside = run(
        "inferoscope", "export", str(bundle), "--parquet", str(bundle / "raw_trace.ndjson"), "--overwrite"
    )
    assert inside.returncode == 2 and "inside the bundle" in inside.stderr
    assert (bundle / "raw_trace.ndjson").read_bytes() == before


def test_derive_refuses_exact_with_a_threshold(tmp_path: Path) -> None:
    result = run("inferoscope", "derive", str(B), "--threshold", "0.8", "--exact")
    assert result.returncode == 2 and "exclude each other" in result.stderr
    assert run("inferoscope", "derive", str(B), "--threshold", "1.5").returncode == 2


def test_derive_says_once_that_a_run_without_structure_slows_the_uncapped_matcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Random routing founds a motif at nearly every token; the uncapped matcher then compares
    each token with all of them. derive says so once, on stderr, and names --cap."""
    import inferoscope.derive as derive_module
    from inferoscope.cli import main
    from inferoscope.synthetic import write_synthetic_v02

    monkeypatch.setattr(derive_module, "MANY_MOTIFS", 200)
    run_dir = write_synthetic_v02(tmp_path / "random", "random", 1500, layers=2, experts=16, top_k=2)
    assert main(["derive", str(run_dir)]) == 0
    said = capfd.readouterr()
    assert said.err.count("motifs in") == 1 and "--cap 1024 bounds the cost" in said.err
    assert "1500 tokens" in said.out and "motifs in" not in said.out
    assert main(["derive", str(run_dir), "--cap", "64"]) == 0  # capped: nothing to say
    assert "motifs in" not in capfd.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_derive_notice_that_stderr_cannot_take_loses_nothing(tmp_path: Path) -> None:
    """A stderr that is full takes the notice, never the derived files or the exit status (a
    line left in stderr's buffer would fail again at the helper's fork and at exit)."""
    from inferoscope.synthetic import write_synthetic_v02

    run_dir = write_synthetic_v02(tmp_path / "random", "random", 1500, layers=2, experts=16, top_k=2)
    # stderr a buffered file on a full device: what is written waits in its buffer, and every
    # flush after it (the helper's fork, the exit) fails, unless the notice never entered it
    script = (
        "import sys, inferoscope.derive as d; d.MANY_MOTIFS = 200; from inferoscope.cli import main; "
        "sys.stderr = open('/dev/full', 'w'); "
        f"sys.exit(main(['derive', {str(run_dir)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "1500 tokens" in result.stdout
    for name in ("derived.ndjson", "motif_ledger.json", "contingency.json"):
        assert (run_dir / name).stat().st_size > 0


def test_a_derive_notice_that_cannot_be_written_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the notice's receiver raises of a failing write, the derivation goes on."""
    import inferoscope.derive as derive_module
    from inferoscope.derive import write_derived
    from inferoscope.synthetic import write_synthetic_v02

    monkeypatch.setattr(derive_module, "MANY_MOTIFS", 200)
    run_dir = write_synthetic_v02(tmp_path / "random", "random", 1500, layers=2, experts=16, top_k=2)
    tried: list[str] = []

    def closed_stderr(text: str) -> None:
        tried.append(text)
        raise BrokenPipeError(32, "Broken pipe")

    summary = write_derived(run_dir, notice=closed_stderr)
    assert len(tried) == 1 and summary["tokens"] == 1500
    for name in ("derived.ndjson", "motif_ledger.json", "contingency.json"):
        assert (run_dir / name).stat().st_size > 0


def test_demo_refuses_an_existing_run_before_loading_the_model_and_quotes_its_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import inferoscope.capture.demo as demo
    from inferoscope.cli import main
    from inferoscope.extraction import write_run_bundle

    def must_not_run(*_args: object) -> Path:
        raise AssertionError("the model was loaded although the output exists")

    root = tmp_path / "my runs"
    (root / "demo-run").mkdir(parents=True)
    monkeypatch.setattr(demo, "capture_demo", must_not_run)
    assert main(["demo", "--out", str(root)]) == 2
    assert "already exists; use --overwrite" in capsys.readouterr().err

    def fake_capture(out: Path, run_id: str, tokens: int, step: object) -> Path:
        return write_run_bundle(out, *make_bundle_parts(run_id=run_id, tokens=3))

    monkeypatch.setattr(demo, "capture_demo", fake_capture)
    assert main(["demo", "--out", str(root), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert f"open it: inferoscope tui '{root / 'demo-run'}'" in printed
    assert sorted(p.name for p in root.iterdir()) == ["demo-run"]
    assert len((root / "demo-run" / "raw_trace.ndjson").read_text().splitlines()) == 3


@pytest.mark.parametrize("command", [["demo"], ["capture", "--model", "m", "--prompt", "p"]])
def test_capture_without_torch_names_the_extra_to_install(command: list[str], tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['torch'] = None\n"  # as on a machine where torch is not installed
        "from inferoscope.cli import main\n"
        f"sys.exit(main({[*command, '--out', str(tmp_path)]!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "capture needs torch" in result.stderr and "-m pip install torch==2.13.0" in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_lone_surrogate_is_valid_and_every_command_shows_it_escaped(tmp_path: Path) -> None:
    manifest, events, layout = make_bundle_parts(tokens=3)
    folder = write_raw_bundle(tmp_path / "b", manifest, events, layout)
    text = (folder / "manifest.json").read_text().replace('"Once upon a time"', '"Once \\ud800 upon"')
    (folder / "manifest.json").write_text(text)
    raw = (folder / "raw_trace.ndjson").read_text().replace('" tok1"', '" tok\\udfff1"')
    (folder / "raw_trace.ndjson").write_text(raw)
    assert run("inferoscope", "validate", str(folder)).returncode == 0  # valid JSON, valid bundle
    shown = run("inferoscope", "inspect", str(folder))
    assert shown.returncode == 0 and "Once \\ud800 upon" in shown.stdout
    compared = run("inferoscope", "compare", str(folder), str(folder))
    assert compared.returncode == 0, compared.stderr
    out = tmp_path / "x.parquet"
    exported = run("inferoscope", "export", str(folder), "--parquet", str(out))
    assert exported.returncode == 0, exported.stderr
    import pyarrow.parquet as pq

    assert " tok\\udfff1" in pq.read_table(out).column("token_text").to_pylist()


@pytest.mark.parametrize("scramble", [False, True])
def test_a_full_disk_while_deriving_is_one_line_naming_where_and_the_bundle_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], scramble: bool
) -> None:
    import errno
    import shutil

    import inferoscope.derive as derive_module
    import inferoscope.scramble as scramble_module
    from inferoscope.cli import main

    run = tmp_path / "runs" / B.name
    shutil.copytree(B, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def full(*_args: object, **_kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        scramble_module if scramble else derive_module,
        "scramble_bundle" if scramble else "write_derived",
        full,
    )
    out = tmp_path / "twins"
    args = ["derive", str(run), *(["--scramble", "tokens", "--out", str(out)] if scramble else [])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"inferoscope: cannot write under {out if scramble else run}: No space left on device"
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
