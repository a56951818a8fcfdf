"""``python -m inferoscope.inspect RUN_DIR [--json]``: the original library's plain summary.

Byte-compatible with the original's output for valid bundles; exit 0 when the bundle is
valid, 1 (reason on stderr) when it is not, 2 for usage errors. Bundle text is printed
with control characters made visible.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .bundle.errors import RunBundleError
from .bundle.reader import BundleOpenError, RunReader
from .summary import RunSummary
from .textsafe import visible


def format_text(summary: RunSummary) -> str:
    """The plain ``key: value`` lines."""
    data = summary.compat_dict()
    counts = ", ".join(f"{i}={n}" for i, n in summary.layer_expert_counts()) or "none"
    optional = " ".join(
        f"{key}={'yes' if present else 'no'}" for key, present in data["optional_artifacts"].items()
    )
    duration = data["decode_duration_ms"]
    duration_text = (
        "none"
        if duration is None
        else f"min={duration['min']!r} avg={duration['avg']!r} max={duration['max']!r}"
    )

    def show(value: object) -> str:
        return visible(value) if isinstance(value, str) else str(value)

    lines = [
        f"run_id: {show(data['run_id'])}",
        f"created_at: {show(data['created_at'])}",
        f"model_id: {show(data['model_id'])}",
        f"tokenizer_id: {show(data['tokenizer_id'])}",
        f"raw_events: {data['raw_events']}",
        f"layers: {data['layers']}",
        f"layer_expert_counts: {counts}",
        f"optional_artifacts: {optional}",
        f"prompt_text: {json.dumps(data['prompt_text'])}",
        f"decode_duration_ms: {duration_text}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inferoscope.inspect", description="Summarise a run bundle."
    )
    parser.add_argument("run_dir")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = RunSummary.of(RunReader(args.run_dir))
    except BundleOpenError as exc:
        print(visible(str(exc)), file=sys.stderr)
        return 1
    if not summary.report.ok:
        error = RunBundleError(
            f"run bundle {args.run_dir} failed validation",
            summary.report.issues,
            summary.report.counts_by_code(),
        )
        print(error, file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(summary.compat_dict(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_text(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
