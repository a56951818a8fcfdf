"""Packaging promises: the core imports no UI or torch, and an installed wheel finds its schemas."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import VALID

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_core_does_not_import_textual_or_torch() -> None:
    code = (
        "import sys, inferoscope, inferoscope.extraction, inferoscope.validation, inferoscope.cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'torch', 'transformers')); "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = out.glob("inferoscope-*.whl")
    return built


def test_the_wheel_ships_the_schemas_of_both_contracts_once(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    schemas = sorted(n for n in names if n.endswith(".schema.json"))
    assert schemas == [
        f"inferoscope/schema/v0.1.0/{a}.schema.json"
        for a in ("contingency", "derived_event", "layout", "manifest", "motif_ledger", "raw_event")
    ] + [f"inferoscope/schema/v0.2.0/{a}.schema.json" for a in ("manifest", "raw_event")]


def test_the_wheel_ships_the_app_the_micro_model_and_the_example_run(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "inferoscope_tui/app.py",
        "inferoscope_tui/app.tcss",
        "inferoscope/micro_model/model.safetensors",
        "inferoscope/micro_model/tokenizer.json",
        "inferoscope/examples/demo-run/raw_trace.ndjson",
    ):
        assert needed in names, needed


def test_an_installed_wheel_outside_the_checkout_validates_a_bundle(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # dependencies (numpy, msgspec, ...) come from this interpreter's site-packages, not the checkout
    deps = sysconfig.get_paths()["purelib"]
    (site / "deps.pth").write_text(deps + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import inferoscope, sys; from inferoscope.validation.schema_files import schema_dir; "
        "report = inferoscope.RunReader(sys.argv[1]).validate(); "
        "print(inferoscope.__file__); print(schema_dir()); print(report.ok, len(report.issues))"
    )
    result = subprocess.run(
        [str(python), "-c", code, str(VALID / "b_olmoe_64tok_16x64_top8")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=120,
    )
    package_file, schemas, verdict = result.stdout.strip().splitlines()
    assert verdict == "True 0", result.stderr
    assert Path(package_file).is_relative_to(site) and Path(schemas).is_relative_to(site)
