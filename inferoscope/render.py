"""Rich renderables for ``inferoscope inspect`` and ``validate`` (bundle text always as Text)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .bundle.report import ValidationReport
from .summary import RunSummary
from .textsafe import visible, visible_value
from .validation.issues import ValidationIssue


def _text(value: object, max_chars: int = 200) -> Text:
    return Text("—" if value is None else visible_value(value, max_chars))


def _experts(pairs: Iterable[tuple[int, int]]) -> str:
    return ", ".join(f"{expert}:{count}" for expert, count in pairs) or "—"


def _never(experts: list[int]) -> str:
    if not experts:
        return "0"
    shown = ", ".join(map(str, experts[:8]))
    return f"{len(experts)} ({shown}{', …' if len(experts) > 8 else ''})"


def inspect_view(summary: RunSummary, table_box: box.Box) -> RenderableType:
    """Provenance, counts, per-layer table, timing, artifacts and validation status."""
    data = summary.to_dict()
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for label, key in (
        ("run", "run_id"),
        ("model", "model_id"),
        ("tokenizer", "tokenizer_id"),
        ("created", "created_at"),
        ("seed", "seed"),
    ):
        facts.add_row(label, _text(data[key]))
    manifest = summary.manifest or {}
    kind = manifest.get("run_kind")
    if isinstance(kind, str):
        facts.add_row("kind", _text(_kind_line(kind, manifest), 200))
    if kind in (None, "generate") or summary.prompt_text:
        facts.add_row("prompt", _text(summary.prompt_text, 160))
    facts.add_row("events", Text(str(data["raw_events"])))
    facts.add_row("MoE layers", Text(str(data["layers"])))
    duration = data["decode_duration_ms"]
    if duration is None:
        facts.add_row("decode ms", Text("—"))
    else:
        rate = data["decode_tokens_per_s"]
        facts.add_row(
            "decode ms",
            Text(
                f"min {duration['min']:.3f}  avg {duration['avg']:.3f}  max {duration['max']:.3f}"
                + (f"  ({rate:.1f} tokens/s)" if rate else "")
            ),
        )
    present = [name for name, here in data["optional_artifacts"].items() if here]
    facts.add_row("artifacts", Text(", ".join(present) if present else "none (raw only)"))
    if summary.profile == "v0.2":
        facts.add_row("contract", Text(f"v0.2 (routing in array files, {data['float_dtype']})"))
        for row in summary.routing_rows():
            layers = row["layers"]
            contiguous = layers == list(range(layers[0], layers[-1] + 1))
            span = (
                str(layers[0])
                if len(layers) == 1
                else f"{layers[0]}–{layers[-1]}"
                if contiguous
                else str(layers)
            )
            facts.add_row(
                f"group {_text(row['group'], 20)}",
                Text(
                    f"layer{'s' if len(layers) > 1 else ''} {span}: "
                    f"{row['num_experts']} experts, top-{row['top_k']}; "
                    f"{_plural(row['scores'])}; selection: {row['selection']}; "
                    f"weights: {row['mixing_weights']}"
                    + (
                        f"; {row['shared_experts']} shared expert(s), always on"
                        if row["shared_experts"]
                        else ""
                    )
                    + f"; recorded: {', '.join(row['recorded'])}"
                ),
            )

    layers = Table(title="Per-layer routing", box=table_box, title_justify="left")
    for header, justify in (
        ("layer", "right"),
        ("experts", "right"),
        ("top-k", "right"),
        (entropy_header(summary), "right"),
        ("most loaded", "left"),
        ("least loaded", "left"),
        ("never selected", "left"),
    ):
        layers.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in summary.layer_rows():
        mean = row["mean_normalized_entropy"]
        layers.add_row(
            str(row["layer_index"]),
            str(row["num_total_experts"]),
            str(row["num_active_experts"]),
            "—" if mean is None else f"{mean:.4f}",
            _experts(row["most_loaded"]),
            _experts(row["least_loaded"]),
            _never(row["never_selected"]),
        )
    parts: list[RenderableType] = [facts, Text()]
    if summary.layer_rows():
        parts += [layers, Text()]
    parts.append(validation_status(summary.report, table_box))
    return Group(*parts)


def entropy_header(summary: RunSummary) -> str:
    """v0.2 sigmoid or logit routers: say what the entropy is of (scores are not probabilities)."""
    functions = {g.score_function for g in summary.routing.groups} if summary.routing else {"softmax"}
    if functions == {"softmax"}:
        return "mean H/ln n"
    if functions == {"sigmoid"}:
        return "mean H/ln n (scores/sum)"
    return "mean H/ln n (see docs)"


def validation_status(report: ValidationReport, table_box: box.Box) -> RenderableType:
    if report.ok and report.total == 0:
        return Text("validation: clean", style="bold green")
    counts = Table(
        title=f"validation: {report.total} issue(s)",
        box=table_box,
        title_justify="left",
        title_style="bold red",
    )
    counts.add_column("code")
    counts.add_column("count", justify="right")
    for code, count in report.counts_by_code().items():
        counts.add_row(Text(code), str(count))
    first = report.issues[0] if report.issues else None
    where = Text()
    if first is not None:
        where.append("first: ", style="bold")
        where.append(visible(first.describe(), 300))
        where.append("\n")
    where.append("every issue with its location: inferoscope validate RUN_DIR", style="dim")
    return Group(counts, where)


def issues_view(run_dir: str, report: ValidationReport, max_issues: int) -> RenderableType:
    """Every issue (up to ``max_issues``) grouped by code, each with its location."""
    header = Text(visible(run_dir), style="bold")
    if report.total == 0:
        return Group(header.append(": clean", style="green"))
    header.append(f": {report.total} issue(s)", style="red")
    groups: dict[str, list[ValidationIssue]] = defaultdict(list)
    for issue in report.issues[:max_issues]:
        groups[issue.code].append(issue)
    lines: list[RenderableType] = [header]
    for code, count in report.counts_by_code().items():
        lines.append(Text(f"  {code} ({count})", style="bold"))
        for issue in groups.get(code, []):
            where = issue.location.describe() or issue.scope
            line = Text("    ")
            line.append(visible(where, 200), style="cyan")
            line.append(": ")
            line.append(visible(issue.message + (f" ({issue.detail})" if issue.detail else ""), 400))
            lines.append(line)
    shown = min(report.total, max_issues, len(report.issues))
    if shown < report.total:
        lines.append(Text(f"  … {report.total - shown} more not shown (--max-issues)", style="dim"))
    return Group(*lines)


def _plural(noun: str) -> str:
    """``softmax probability`` -> ``softmax probabilities``; ``sigmoid score`` -> ``sigmoid scores``."""
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def _kind_line(kind: str, manifest: dict[str, object]) -> str:
    """``teacher_forced: document 3, source 'code', 128 tokens`` / ``engine: sglang`` / ``generate``."""
    config = manifest.get("capture_config")
    config = config if isinstance(config, dict) else {}
    routed = config.get("teacher_forced")
    if kind == "teacher_forced" and isinstance(routed, dict):
        parts = [f"document {routed.get('document_index')}"]
        if routed.get("source") is not None:
            parts.append(f"source {routed.get('source')!r}")
        return f"{kind}: " + ", ".join(parts)
    if kind == "engine" and isinstance(config.get("engine"), str):
        return f"{kind}: {config['engine']} routed experts (top-k only), imported"
    return kind
