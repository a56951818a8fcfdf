"""``inferoscope convert``: v0.1.0 -> v0.2 -> v0.1.0 is byte-identical; what v0.1.0 cannot hold is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferoscope import RunReader, write_run_bundle
from inferoscope.cli import EXAMPLE_RUN
from inferoscope.convert import ConvertError, convert_run
from inferoscope.synthetic import write_synthetic_v02

from .conftest import make_bundle_parts


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_the_shipped_example_run_goes_to_v02_and_back_byte_for_byte(tmp_path: Path) -> None:
    there = convert_run(EXAMPLE_RUN, tmp_path / "v02", to="v0.2")
    assert there.float_dtype == "float64"  # its probabilities are not all exact in float32
    reader = RunReader(there.path)
    assert reader.profile == "v0.2" and reader.validate().ok
    back = convert_run(there.path, tmp_path / "v01", to="v0.1")
    same_files(EXAMPLE_RUN, back.path)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tokens=st.integers(1, 6),
    layers=st.integers(1, 3),
    experts=st.integers(2, 9),
    data=st.data(),
)
def test_any_valid_v01_run_round_trips_exactly(
    tmp_path_factory: pytest.TempPathFactory, tokens: int, layers: int, experts: int, data: st.DataObject
) -> None:
    top_k = data.draw(st.integers(1, experts))
    seed = data.draw(st.integers(0, 2**16))
    root = tmp_path_factory.mktemp("rt")
    manifest, events, layout = make_bundle_parts(tokens, layers, experts, top_k, seed=seed)
    source = write_run_bundle(root / "src", manifest, events, layout)
    there = convert_run(source, root / "v02", to="v0.2")
    back = convert_run(there.path, root / "v01", to="v0.1")
    same_files(source, back.path)
    # and v0.2 -> v0.1 -> v0.2 gives the same arrays and lines again
    again = convert_run(back.path, root / "v02b", to="v0.2")
    same_files(there.path, again.path)


def test_float32_storage_is_explicit_and_still_valid(tmp_path: Path) -> None:
    result = convert_run(EXAMPLE_RUN, tmp_path, to="v0.2", dtype="float16")
    assert result.float_dtype == "float16" and RunReader(result.path).validate().ok


def test_v01_cannot_hold_a_sigmoid_router(tmp_path: Path) -> None:
    run = write_synthetic_v02(tmp_path / "src", "ds", 5, layers=2, experts=16, top_k=4, router="deepseek")
    with pytest.raises(ConvertError, match="sigmoid"):
        convert_run(run, tmp_path / "out", to="v0.1")
    assert not (tmp_path / "out").exists()


def test_v01_cannot_hold_weights_that_follow_no_declared_rule_or_top_k_only(tmp_path: Path) -> None:
    run = write_synthetic_v02(tmp_path / "src", "sm", 4, layers=2, experts=8, top_k=2)
    back = convert_run(run, tmp_path / "ok", to="v0.1")  # renormalised weights follow from the scores
    assert any("mixing weights not carried" in note for note in back.notes)
    assert RunReader(back.path).validate().ok


def test_an_invalid_source_is_refused_with_its_issues(tmp_path: Path) -> None:
    run = write_synthetic_v02(tmp_path / "src", "sm", 4, layers=2, experts=8, top_k=2)
    (run / "arrays/moe.scores.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="array_header_invalid"):
        convert_run(run, tmp_path / "out", to="v0.1")


def test_cli_convert_reports_and_refuses_in_one_line(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "inferoscope", "convert", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    ok = cli(str(EXAMPLE_RUN), "--to", "v0.2", "--out", str(tmp_path))
    assert ok.returncode == 0 and "contract v0.2" in ok.stdout
    again = cli(str(EXAMPLE_RUN), "--to", "v0.2", "--out", str(tmp_path))
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1 and "exists" in again.stderr
    ds = write_synthetic_v02(tmp_path / "ds", "ds", 3, layers=1, experts=8, top_k=2, router="deepseek")
    refused = cli(str(ds), "--to", "v0.1", "--out", str(tmp_path / "x"))
    assert (
        refused.returncode == 2 and "cannot hold" in refused.stderr and len(refused.stderr.splitlines()) == 1
    )
    missing = cli(str(tmp_path / "nope"), "--to", "v0.1", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_a_killed_v02_write_leaves_nothing_under_the_target_name(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from inferoscope.bundle.writer_v02 import RunWriter, default_array_paths
        from inferoscope.synthetic import v02_manifest, route_block
        group = {{"name": "moe", "layers": [0, 1], "num_experts": 8, "top_k": 2,
                  "score_function": "softmax", "selection": {{"rule": "topk", "bias": False}},
                  "mixing": {{"rule": "renormalize", "scale": 1.0}}, "shared_experts": 0,
                  "arrays": default_array_paths("moe")}}
        writer = RunWriter({str(tmp_path)!r}, v02_manifest("killed", [group]))
        rng = np.random.default_rng(0)
        for t in range(50):
            meta = {{"event_type": "token_complete", "schema_version": "raw/v0.2.0", "run_id": "killed",
                    "token_index": t, "token_id": t, "token_text": "x", "context_length": t + 1}}
            routed = route_block(rng, 1, 2, 8, 2, "softmax")
            writer.add_token(meta, {{"moe": {{k: v[0] for k, v in routed.items()}}}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (tmp_path / "killed").exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(name.startswith(".killed.staging-") for name in leftovers)
    # a later writer of the same run sweeps what a dead writer left (once it is a minute old)
    for path in tmp_path.iterdir():
        old = path.stat().st_mtime - 120
        os.utime(path, (old, old))
    write_synthetic_v02(tmp_path, "killed", 3, layers=2, experts=8, top_k=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]


def test_token_events_read_the_same_from_both_contracts(tmp_path: Path) -> None:
    there = convert_run(EXAMPLE_RUN, tmp_path, to="v0.2").path
    a, b = RunReader(EXAMPLE_RUN), RunReader(there)
    for i in (0, 17, len(a) - 1):
        ea, eb = a.token_event(i), b.token_event(i)
        assert (ea.token_index, ea.token_id, ea.token_text, ea.context_length, ea.timing) == (
            eb.token_index,
            eb.token_id,
            eb.token_text,
            eb.context_length,
            eb.timing,
        )
        for la, lb in zip(ea.layers, eb.layers, strict=True):
            assert la.layer_index == lb.layer_index and la.selected == lb.selected
            assert la.scores is not None and lb.scores is not None
            assert np.array_equal(la.scores, lb.scores)
            assert la.entropy() == pytest.approx(lb.entropy(), abs=1e-12)
