"""README promises: the API example runs and the quick start's example run is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from inferoscope import RunReader

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True {}")
    assert (tmp_path / "runs" / "my-run" / "raw_trace.ndjson").is_file()


def test_quick_start_opens_the_shipped_example_run_which_is_clean() -> None:
    from inferoscope.cli import EXAMPLE_RUN

    command = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("\n", 1)[0]
    assert command.endswith("inferoscope tui")
    assert EXAMPLE_RUN.is_relative_to(ROOT / "inferoscope")
    report = RunReader(EXAMPLE_RUN).validate()
    assert report.ok and report.aggregates.events == 200
