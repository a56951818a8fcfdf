"""``python -m inferoscope.inspect RUN_DIR [--json]``: the original library's plain summary.

Byte-compatible with the original's output for valid bundles; exit 0 when the bundle is
valid, 1 (reason on stderr, starting with the original's words) when it is not, 2 for usage
errors. One deliberate difference: ids and the prompt are printed with control characters made
visible (``\\x1b``), never sent to the terminal raw.

``build_summary`` / ``build_summary_lines`` work on a bundle loaded with ``load_run_bundle``,
as in the original; ``main`` streams the bundle through the validating reader instead, so a
run of any size is summarised in flat memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .bundle.errors import bundle_error
from .bundle.loader import not_found
from .bundle.reader import BundleOpenError, RunReader
from .summary import RunSummary, layout_expert_counts, layout_layer_count
from .textsafe import visible


def build_summary(bundle: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable summary of a loaded bundle (the original's ``--json`` keys)."""
    manifest, raw_events, layout = bundle["manifest"], bundle["raw_events"], bundle["layout"]
    prompt = manifest.get("prompt")
    durations = [
        float(event["timing_ms"]["decode_duration"])
        for event in raw_events
        if isinstance(event.get("timing_ms"), dict)
        and isinstance(event["timing_ms"].get("decode_duration"), (int, float))
    ]
    return {
        "run_id": manifest.get("run_id"),
        "created_at": manifest.get("created_at"),
        "model_id": manifest.get("model_id"),
        "tokenizer_id": manifest.get("tokenizer_id"),
        "prompt_text": prompt.get("text") if isinstance(prompt, dict) else None,
        "raw_events": len(raw_events),
        "layers": layout_layer_count(layout),
        "layer_expert_counts": [
            {"layer_index": index, "num_total_experts": n} for index, n in layout_expert_counts(layout)
        ],
        "optional_artifacts": {
            "derived": bundle.get("derived_events") is not None,
            "motif_ledger": bundle.get("motif_ledger") is not None,
            "contingency": bundle.get("contingency") is not None,
        },
        "decode_duration_ms": (
            {"min": min(durations), "max": max(durations), "avg": sum(durations) / len(durations)}
            if durations
            else None
        ),
    }


def build_summary_lines(bundle: dict[str, Any]) -> list[str]:
    """The plain ``key: value`` lines of a loaded bundle."""
    return summary_lines(build_summary(bundle))


def summary_lines(data: dict[str, Any]) -> list[str]:
    """``key: value`` lines of a summary dict; no prompt or duration line when there is none."""

    def show(value: object) -> str:
        return visible(value) if isinstance(value, str) else str(value)

    counts = ", ".join(f"{c['layer_index']}={c['num_total_experts']}" for c in data["layer_expert_counts"])
    optional = " ".join(
        f"{key}={'yes' if present else 'no'}" for key, present in data["optional_artifacts"].items()
    )
    lines = [
        f"run_id: {show(data['run_id'])}",
        f"created_at: {show(data['created_at'])}",
        f"model_id: {show(data['model_id'])}",
        f"tokenizer_id: {show(data['tokenizer_id'])}",
        f"raw_events: {data['raw_events']}",
        f"layers: {data['layers']}",
        f"layer_expert_counts: {counts}",
        f"optional_artifacts: {optional}",
    ]
    if data["prompt_text"] is not None:
        lines.append(f"prompt_text: {json.dumps(data['prompt_text'])}")
    duration = data["decode_duration_ms"]
    if duration is not None:
        lines.append(
            f"decode_duration_ms: min={duration['min']!r} avg={duration['avg']!r} max={duration['max']!r}"
        )
    return lines


def format_text(summary: RunSummary) -> str:
    """The plain summary of a streamed bundle, one line per key."""
    return "\n".join(summary_lines(summary.compat_dict())) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inferoscope.inspect",
        description="Load, validate, and summarize an inferoscope run bundle.",
    )
    parser.add_argument("--json", action="store_true", help="Emit the summary as JSON for scripts and CI.")
    parser.add_argument("run_dir", help="Path to a run bundle directory.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary and return 0; on a bad bundle print why and exit 1 (SystemExit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = RunSummary.of(RunReader(args.run_dir))
    except BundleOpenError as exc:
        parser.exit(status=1, message=f"{not_found(exc, args.run_dir)}\n")
    if not summary.report.ok:
        error = bundle_error(str(args.run_dir), summary.report.issues, summary.report.counts_by_code())
        parser.exit(status=1, message=f"{error}\n")
    if args.json:
        sys.stdout.write(json.dumps(summary.compat_dict(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_text(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
