"""The ``inferoscope`` command line: ``inspect`` and ``validate``.

Every failure is one line on stderr and an exit code: 0 clean, 1 issues found,
2 usage errors or input that cannot be read at all. Set INFEROSCOPE_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from . import __version__
from .bundle.errors import WRITE_FAILURES, RunBundleError
from .bundle.reader import BundleOpenError, RunReader
from .render import inspect_view, issues_view
from .run_ids import RunIdError, run_dir_for
from .summary import RunSummary
from .textsafe import visible
from .versions import RAW_TRACE_FILE

EXIT_OK, EXIT_ISSUES, EXIT_UNREADABLE = 0, 1, 2
EXAMPLE_RUN = Path(__file__).resolve().parent / "examples" / "demo-run"
PROGRESS_MIN_BYTES = 16 * 1024 * 1024


def _consoles() -> tuple[Console, Console]:
    """stdout and stderr consoles; piped output gets a fixed width instead of 80 columns."""
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, width=120)
    return out, Console(stderr=True, highlight=False)


def _table_box(console: Console) -> box.Box:
    return box.ROUNDED if console.is_terminal and console.encoding.lower().startswith("utf") else box.ASCII


@contextmanager
def _progress(console: Console, reader: RunReader, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for large raw traces when stderr is a terminal."""
    try:
        size = reader.raw_path.stat().st_size
    except OSError:
        size = 0
    if not console.is_terminal or size < PROGRESS_MIN_BYTES:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(visible(label, 60), total=size)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def _open(run_dir: str) -> RunReader | None:
    try:
        return RunReader(run_dir)
    except BundleOpenError as exc:
        _error_line(f"inferoscope: {visible(str(exc))}")
        return None


def cmd_inspect(args: argparse.Namespace) -> int:
    out, err = _consoles()
    from .runset import run_set

    runs = run_set(args.run_dir)
    if runs:
        return _inspect_run_set(out, args, runs)
    reader = _open(args.run_dir)
    if reader is None:
        return EXIT_UNREADABLE
    with _progress(err, reader, f"validating {RAW_TRACE_FILE}") as progress:
        summary = RunSummary.of(reader, progress)
    if args.json:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        out.print(inspect_view(summary, _table_box(out)))
    return EXIT_OK if summary.report.ok else EXIT_ISSUES


def _inspect_run_set(out: Console, args: argparse.Namespace, runs: list[Path]) -> int:
    """A run set: one row per run (size, validation state, source, tokens)."""
    from rich.table import Table

    from .runset import run_rows

    rows = run_rows(runs)
    if args.json:
        data = [
            {
                "run_dir": str(row.path),
                "run_id": row.run_id,
                "contract": row.contract,
                "run_kind": row.kind,
                "tokens": row.tokens,
                "bytes": row.size_bytes,
                "ok": row.ok,
                "issues": row.issues,
                "source": row.source,
            }
            for row in rows
        ]
        sys.stdout.write(
            json.dumps({"run_set": str(args.run_dir), "runs": data}, indent=2, sort_keys=True) + "\n"
        )
    else:
        table = Table(
            title=f"run set {visible(str(args.run_dir), 80)}", box=_table_box(out), title_justify="left"
        )
        for header in ("run", "contract", "kind", "source", "tokens", "MiB", "validation"):
            table.add_column(header, justify="right" if header in ("tokens", "MiB") else "left")
        for row in rows:
            state = "unreadable" if row.ok is None else "clean" if row.ok else f"{row.issues} issue(s)"
            table.add_row(
                Text(visible(row.path.name, 40)),
                row.contract,
                row.kind or "—",
                Text(visible(row.source or "—", 24)),
                str(row.tokens),
                f"{row.size_bytes / 2**20:.2f}",
                state,
            )
        out.print(table)
        sources: dict[str, int] = {}
        for row in rows:
            sources[row.source or "—"] = sources.get(row.source or "—", 0) + row.tokens
        summary = ", ".join(f"{visible(k, 24)} {v}" for k, v in sorted(sources.items()))
        out.print(Text(f"{len(rows)} runs, {sum(r.tokens for r in rows)} tokens; by source: {summary}"))
    return EXIT_OK if all(row.ok for row in rows) else EXIT_ISSUES


def cmd_validate(args: argparse.Namespace) -> int:
    out, err = _consoles()
    from .runset import expand

    if args.max_issues < 0:
        _error_line("inferoscope: --max-issues must be >= 0")
        return EXIT_UNREADABLE
    worst = EXIT_OK
    results: list[dict[str, Any]] = []
    for run_dir in expand(list(args.run_dirs)):
        reader = _open(run_dir)
        if reader is None:
            worst = EXIT_UNREADABLE
            results.append({"run_dir": run_dir, "readable": False})
            continue
        with _progress(err, reader, f"validating {run_dir}") as progress:
            report = reader.validate(progress, series=False)  # only counts are shown
        if not report.ok and worst == EXIT_OK:
            worst = EXIT_ISSUES
        if args.json:
            data = report.to_dict()
            data["issues"] = data["issues"][: args.max_issues]
            data["truncated"] = report.total > len(data["issues"])
            results.append({"run_dir": run_dir, "readable": True, "events": report.aggregates.events, **data})
        else:
            out.print(issues_view(run_dir, report, args.max_issues), soft_wrap=True)
    if args.json:
        sys.stdout.write(json.dumps({"bundles": results}, indent=2, sort_keys=True) + "\n")
    return worst


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .compare import compare_runs

    out, _err = _consoles()
    try:
        result = compare_runs(args.run_a, args.run_b)
    except BundleOpenError as exc:
        _error_line(f"inferoscope: {visible(str(exc))}")
        return EXIT_UNREADABLE
    data = result.to_dict(worst=args.top)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return EXIT_OK

    def number(value: float | None, digits: int = 4) -> str:
        if value is None:
            return "—"
        # small divergences (bf16 vs fp32 is ~1e-5 bits) stay readable instead of rounding to 0
        return f"{value:.2e}" if 0 < abs(value) < 10**-digits * 10 else f"{value:.{digits}f}"

    out.print(
        Text.assemble(("A ", "bold"), visible(result.run_a), "\n", ("B ", "bold"), visible(result.run_b))
    )
    out.print(
        Text(
            f"tokens {result.tokens_a} vs {result.tokens_b}, {result.aligned} aligned; "
            f"top-k Jaccard {number(data['mean_topk_jaccard'])}, "
            + (
                f"JSD {number(data['mean_jsd_bits'])} bits, "
                if data["mean_jsd_bits"] is not None
                else "JSD — (a run without scores), "
            )
            + f"top-1 agreement {number(data['top1_agreement'])}; identical top-k set "
            f"{number(data['identical_topk_set'])}, "
            f"same order given the set {number(data['same_order_given_set'])}"
        )
    )
    table = Table(title="per layer", box=_table_box(out), title_justify="left")
    for header in (
        "layer",
        "tokens",
        "top-k Jaccard",
        "same set",
        "same order|set",
        "mean JSD bits",
        "max JSD bits",
        "top-1 agree",
    ):
        table.add_column(header, justify="right")
    for row in data["per_layer"]:
        table.add_row(
            str(row["layer_index"]),
            str(row["compared_tokens"]),
            number(row["mean_topk_jaccard"]),
            number(row["identical_topk_set"]),
            number(row["same_order_given_set"]),
            number(row["mean_jsd_bits"]),
            number(row["max_jsd_bits"]),
            number(row["top1_agreement"]),
        )
    out.print(table)
    if any(row["flips_with_margin"] for row in data["per_layer"]):
        _print_flip_margins(out, data["per_layer"], number)
    if data["worst_tokens"]:
        reader = RunReader(args.run_a)
        worst = Table(title="least agreeing tokens", box=_table_box(out), title_justify="left")
        for header in ("token", "text (A)", "top-k Jaccard"):
            worst.add_column(header)
        for row in data["worst_tokens"]:
            text = reader.event(row["token"]).get("token_text")
            worst.add_row(
                str(row["token"]),
                Text(visible(text if isinstance(text, str) else "?", 30)),
                number(row["mean_topk_jaccard"]),
            )
        out.print(worst)
    for note in result.notes:
        out.print(Text("note: " + visible(note, 300), style="yellow"))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    out, _err = _consoles()
    from .export import export_parquet
    from .runset import run_set

    runs = run_set(args.run_dir)
    if runs:
        return _export_run_set(out, args, runs)
    reader = _open(args.run_dir)
    if reader is None:
        return EXIT_UNREADABLE
    from .bundle.errors import RunBundleError

    # the bundle is checked as it is exported; the file takes its name only once the check
    # passed (--force: exported as it is, unchecked)
    try:
        result = export_parquet(args.run_dir, args.parquet, overwrite=args.overwrite, validate=not args.force)
    except RunBundleError as exc:
        total = sum(exc.counts.values()) if exc.counts else len(exc.issues)
        _error_line(
            f"inferoscope: {visible(args.run_dir)} has {total} contract issue(s) "
            f"({', '.join(exc.counts)}); run 'inferoscope validate', or --force to export "
            "what is readable"
        )
        return EXIT_ISSUES
    except ModuleNotFoundError as exc:
        _error_line(
            f"inferoscope: export needs {exc.name}: {shlex.quote(sys.executable)} -m pip install pyarrow"
        )
        return EXIT_UNREADABLE
    except (FileExistsError, OSError) as exc:
        _error_line(f"inferoscope: {visible(str(exc), 300)}")
        return EXIT_UNREADABLE
    out.print(
        Text(f"wrote {result.rows} rows (token x layer) to {visible(str(args.parquet))}"), soft_wrap=True
    )
    if result.skipped_events or result.skipped_layers:
        reasons = "; ".join(f"{reason} x{n}" for reason, n in result.reasons.most_common(5))
        out.print(
            Text(
                f"skipped {result.skipped_events} event(s) and {result.skipped_layers} layer row(s) that "
                f"cannot be read or represented: {visible(reasons, 300)}; "
                f"first: {visible(result.first[0], 200)}"
            ),
            soft_wrap=True,
        )
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    out, _err = _consoles()
    from .bundle.errors import RunBundleError
    from .convert import ConvertError, convert_run

    reader = _open(args.run_dir)
    if reader is None:
        return EXIT_UNREADABLE
    try:
        result = convert_run(args.run_dir, args.out, to=args.to, dtype=args.dtype, run_id=args.run_id)
    except ConvertError as exc:
        return _fail(visible(str(exc), 400))
    except RunBundleError as exc:
        first = exc.issues[0].describe() if exc.issues else str(exc)
        _error_line(
            f"inferoscope: {visible(args.run_dir)} is not a valid bundle ({', '.join(exc.counts)}); "
            f"nothing written; first issue: {visible(first, 300)}"
        )
        return EXIT_ISSUES
    except (FileExistsError, OSError, ValueError) as exc:
        return _fail(visible(str(exc), 300))
    out.print(Text(f"wrote {visible(str(result.path))} (contract {result.to})"), soft_wrap=True)
    for note in result.notes:
        out.print(Text(f"  {visible(note, 300)}"), soft_wrap=True)
    return EXIT_OK


def _export_run_set(out: Console, args: argparse.Namespace, runs: list[Path]) -> int:
    """One Parquet dataset: OUT/source=<source>/run=<run>/data.parquet (DuckDB, Polars and Spark read
    it with hive partitioning); every run must validate (or --force)."""
    from .export import export_parquet
    from .runset import run_rows

    target = Path(args.parquet)
    if target.exists() and not args.overwrite:
        return _fail(f"{visible(str(target))} already exists (use --overwrite)")
    rows = run_rows(runs)
    bad = [row for row in rows if not row.ok]
    if bad and not args.force:
        _error_line(
            f"inferoscope: {len(bad)} run(s) of the set have issues (first: {visible(str(bad[0].path))}); "
            "run 'inferoscope validate', or --force to export what is readable"
        )
        return EXIT_ISSUES
    total = 0
    try:
        for row in rows:
            if row.ok is None:
                continue
            source = _partition(row.source or "none")
            part = target / f"source={source}" / f"run={_partition(row.path.name)}" / "data.parquet"
            total += export_parquet(row.path, part, overwrite=args.overwrite).rows
    except ModuleNotFoundError as exc:
        _error_line(
            f"inferoscope: export needs {exc.name}: {shlex.quote(sys.executable)} -m pip install pyarrow"
        )
        return EXIT_UNREADABLE
    except (FileExistsError, OSError, ValueError) as exc:
        return _fail(visible(str(exc), 300))
    out.print(
        Text(
            f"wrote {total} rows of {len(rows)} runs to {visible(str(target))} "
            f"(partitioned by source, then run); DuckDB: "
            f"read_parquet('{visible(str(target))}/**/*.parquet', hive_partitioning=true)"
        ),
        soft_wrap=True,
    )
    return EXIT_OK


def _partition(value: str) -> str:
    """A partition folder name: letters, digits, '-', '_' and '.' only."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in value)[:80].strip(".")
    return cleaned or "_"


def cmd_derive(args: argparse.Namespace) -> int:
    from .derive import DEFAULT_THRESHOLD, write_derived
    from .scramble import scramble_bundle

    out, err = _consoles()
    if args.exact and args.threshold is not None:
        return _fail("--exact and --threshold exclude each other: exact matching has no threshold")
    threshold = None if args.exact else (DEFAULT_THRESHOLD if args.threshold is None else args.threshold)
    if threshold is not None and not 0.0 < threshold <= 1.0:
        return _fail(f"--threshold must be in (0, 1], got {threshold}")
    if args.cap is not None and (args.exact or args.cap < 1):
        return _fail("--cap applies to the cosine matcher (not --exact) and must be at least 1")
    if _open(args.run_dir) is None:
        return EXIT_UNREADABLE
    target = Path(args.run_dir)
    writing = target  # where a failing disk is reported: the twin's folder, then the bundle
    try:
        if args.scramble:
            root = writing = args.out if args.out is not None else target.parent
            target = writing = scramble_bundle(target, root, args.scramble, seed=args.seed)
            notice = Text(
                f"SCRAMBLED ({args.scramble}, seed {args.seed}) copy: {visible(str(target))}",
                style="bold yellow",
            )
            (err if args.json else out).print(notice, soft_wrap=True)
        summary = write_derived(target, threshold, cap=args.cap, notice=_notice_line)
    except (RunBundleError, FileExistsError, RunIdError, ValueError) as exc:
        _error_line(f"inferoscope: {visible(str(exc).splitlines()[0], 400)}")
        return EXIT_ISSUES if isinstance(exc, RunBundleError) else EXIT_UNREADABLE
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        # nothing half-written is left: the twin and the derived files appear whole or not at all
        _error_line(f"inferoscope: cannot write under {visible(str(writing))}: {os.strerror(exc.errno)}")
        return EXIT_UNREADABLE
    if args.json:
        sys.stdout.write(json.dumps({"run_dir": str(target), **summary}, indent=2, sort_keys=True) + "\n")
    else:
        fit = summary["mean_global_fit"]
        tokens = summary["tokens"]
        out.print(
            Text(
                f"{summary['matcher']}: {tokens} token{'' if tokens == 1 else 's'}, "
                f"{summary['global_motifs']} global and {summary['layer_motifs']} layer motifs, "
                f"mean global fit {'—' if fit is None else f'{fit:.3f}'} (provisional; raw trace untouched)"
            ),
            soft_wrap=True,
        )
    return EXIT_OK


def _no_terminal() -> str | None:
    """Why the app cannot draw here (no TTY on stdin or stdout), or None.

    Textual's web and headless drivers bring their own screen, so a driver named in
    TEXTUAL_DRIVER (``textual serve``) is trusted.
    """
    if os.environ.get("TEXTUAL_DRIVER"):
        return None
    missing = [name for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)) if not _is_tty(stream)]
    if not missing:
        return None
    return (
        f"tui needs a terminal, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not one; "
        "over SSH use `ssh -t HOST inferoscope tui ...`; for a summary without a terminal use "
        "`inferoscope inspect RUN_DIR`"
    )


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _unopenable(run_dir: str, role: str) -> str | None:
    """One line saying why ``run_dir`` cannot be opened as a bundle at all, or None."""
    try:
        RunReader(run_dir)
    except BundleOpenError as exc:
        return f"cannot open {role}: {visible(str(exc), 300)}"
    return None


def _print_flip_margins(out: Console, rows: list[dict[str, Any]], number: Callable[..., str]) -> None:
    """Where the sets differ: how near the flipped expert was to the top-k boundary, beside the
    typical gap at that boundary (flips far below the usual gap are near-ties)."""
    from rich.table import Table

    table = Table(title="where the top-k sets differ", box=_table_box(out), title_justify="left")
    for header in ("layer", "flips", "median margin", "median boundary gap", "flips < gap p10"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            str(row["layer_index"]),
            str(row["flips_with_margin"]),
            number(row["median_flip_margin"]),
            number(row["median_boundary_gap"]),
            number(row["flips_below_boundary_gap_p10"], 2),
        )
    out.print(table)
    out.print(
        Text(
            "margin: the lowest selected key minus the key of the closest expert only the other run "
            "chose, in the keys of the run with scores (A where it has them); boundary gap: the k-th "
            "minus the (k+1)-th key on every token",
            style="dim",
        )
    )


def cmd_tui(args: argparse.Namespace) -> int:
    if args.token is not None and args.token < 0:
        return _fail("--token must be >= 0")
    run_dir = args.run_dir if args.run_dir is not None else str(EXAMPLE_RUN)
    from .runset import run_set

    is_set = args.compare is None and run_set(run_dir) is not None  # a folder of runs: their list first
    problem = None if is_set else _unopenable(run_dir, "run bundle")
    if problem is None and args.compare is not None:
        problem = _unopenable(args.compare, "run B (--compare)")
    problem = problem or _no_terminal()
    if problem is not None:
        return _fail(problem)
    from inferoscope_tui import run_app  # the app (and textual) only load for this command

    return run_app(run_dir, token=args.token, compare=args.compare)


def _fail(message: str) -> int:
    """One line on stderr and exit 2."""
    _error_line(f"inferoscope: {message}")
    return EXIT_UNREADABLE


def _notice_line(message: str) -> None:
    """One line on stderr while a command goes on, written straight to the descriptor: where stderr
    is full or closed the line is lost, not left in a buffer that would fail again at every fork
    and at exit (and turn a command that did its work into a failure)."""
    line = (" ".join(message.splitlines()) + "\n").encode("ascii", "replace")
    with suppress(OSError, ValueError):  # ValueError: a stderr with no descriptor, or closed
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), line)


def _error_line(message: str) -> None:
    """Exactly one line on stderr, never wrapped whatever the width, no markup, no control codes."""
    sys.stderr.write(" ".join(message.splitlines()) + "\n")
    sys.stderr.flush()


def _capture_with_progress(
    err: Console, total: int, work: Callable[[Callable[[int], None]], Path]
) -> tuple[Path, float]:
    """Run ``work(on_step)`` under a tokens/s progress bar on stderr (a terminal only)."""
    columns = (
        TextColumn("capturing"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tokens"),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("capture", total=total, rate="")
        started = time.perf_counter()

        def step(count: int) -> None:
            rate = count / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=count, rate=f"{rate:.1f} tok/s")

        run_dir = work(step)
    return run_dir, time.perf_counter() - started


def _capture_summary(out: Console, run_dir: Path, elapsed: float) -> None:
    reader = RunReader(run_dir)
    count = len(reader)
    decoding = ""
    if count:
        first, last = reader.event(0)["timing_ms"], reader.event(count - 1)["timing_ms"]
        seconds = (last["decode_end"] - first["decode_start"]) / 1000
        decoding = f", decoding {count / max(seconds, 1e-9):.1f} tok/s"
    out.print(
        Text.assemble(
            ("captured ", "bold"),
            (f"{count} tokens", "bold green"),
            f" in {elapsed:.1f} s with loading{decoding} -> ",
            (visible(str(run_dir)), "cyan"),
        )
    )
    out.print(Text(f"open it: inferoscope tui {shlex.quote(visible(str(run_dir)))}"), soft_wrap=True)


CAPTURE_PACKAGES = {
    "torch": "torch==2.13.0",
    "transformers": "transformers>=5,<6",
    "tokenizers": "tokenizers",
}


def _capture_dependencies() -> list[str]:
    """The packages capture needs that cannot be imported here (empty when all can)."""
    return [module for module in CAPTURE_PACKAGES if _spec_of(module) is None]


def _spec_of(module: str) -> object:
    """Whether ``module`` could be imported, without importing it (no side effects, no warnings)."""
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _capture_imports_missing(missing: list[str]) -> int:
    """One line naming every missing package and the exact command for this Python."""
    packages = " ".join(shlex.quote(CAPTURE_PACKAGES[m]) for m in missing)
    _error_line(
        f"inferoscope: capture needs {', '.join(missing)} (not installed): "
        f"{shlex.quote(sys.executable)} -m pip install {packages} "
        "(CPU-only torch: add --extra-index-url https://download.pytorch.org/whl/cpu)"
    )
    return EXIT_UNREADABLE


def cmd_capture(args: argparse.Namespace) -> int:
    out, err = _consoles()
    missing = _capture_dependencies()
    if missing:
        return _capture_imports_missing(missing)
    try:
        from .capture import CaptureError, capture_run
        from .capture.loading import load_local
    except ImportError as exc:
        return _capture_imports_missing([exc.name or "torch"])
    if not args.prompt.strip():
        _error_line("inferoscope: the prompt is empty")
        return EXIT_UNREADABLE
    try:
        model, tokenizer = load_local(args.model, device=args.device, dtype=args.dtype)
        run_dir, elapsed = _capture_with_progress(
            err,
            args.max_new_tokens,
            lambda step: capture_run(
                model,
                tokenizer,
                args.prompt,
                max_new_tokens=args.max_new_tokens,
                out=args.out,
                run_id=args.run_id,
                do_sample=args.sample,
                seed=args.seed,
                model_id=args.model_id or str(args.model),
                on_step=step,
                contract=args.format,
                store_dtype=args.store_dtype,
            ),
        )
    except (CaptureError, FileExistsError, RunIdError) as exc:
        _error_line(f"inferoscope: {visible(str(exc), 500)}")
        return EXIT_UNREADABLE
    _capture_summary(out, run_dir, elapsed)
    out.print(Text(f"motifs: inferoscope derive {shlex.quote(visible(str(run_dir)))}"), soft_wrap=True)
    return EXIT_OK


def cmd_route(args: argparse.Namespace) -> int:
    """Teacher-forced routing of a corpus: one v0.2 bundle per document under --out."""
    out, err = _consoles()
    from .corpus import CorpusError, CorpusSpec, check_corpus, documents

    if (args.text is None) == (args.jsonl is None):
        return _fail("give exactly one of --text FILE or --jsonl FILE")
    spec = CorpusSpec(
        path=args.text or args.jsonl,
        kind="text" if args.text is not None else "jsonl",
        field=args.field,
        source_field=args.source_field,
        source=args.source,
    )
    try:
        total_docs = check_corpus(spec)  # every line checked before anything is routed or written
    except (CorpusError, OSError) as exc:
        return _fail(visible(str(exc), 400))
    if total_docs == 0:
        return _fail(f"{visible(str(spec.path), 200)} holds no documents")
    missing = _capture_dependencies()
    if missing:
        return _capture_imports_missing(missing)
    try:
        from .capture import CaptureError, Document, route_corpus
        from .capture.loading import load_local
    except ImportError as exc:
        return _capture_imports_missing([exc.name or "torch"])
    columns = (
        TextColumn("routing"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} documents"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    from .capture.route import check_out_folder

    started, tokens = time.perf_counter(), [0, 0]  # tokens, documents written by this run
    try:
        check_out_folder(args.out, args.prefix)  # before the model loads: a wrong folder fails fast
        model, tokenizer = load_local(args.model, device=args.device, dtype=args.dtype)
        with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task("route", total=total_docs, rate="")

            def on_tokens(count: int) -> None:
                tokens[0] += count
                tokens[1] += 1
                rate = tokens[0] / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=1, rate=f"{rate:.0f} tok/s")

            result = route_corpus(
                model,
                tokenizer,
                (Document(i, text, source) for i, text, source in documents(spec)),
                out=args.out,
                prefix=args.prefix,
                batch=args.batch,
                max_tokens_per_doc=args.max_tokens_per_doc,
                model_id=args.model_id or str(args.model),
                on_tokens=on_tokens,
            )
    except (CaptureError, CorpusError, FileExistsError, RunIdError) as exc:
        _error_line(f"inferoscope: {visible(str(exc), 500)}")
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        _error_line(
            f"inferoscope: interrupted after {tokens[1]} document(s) ({tokens[0]} tokens) of this run; "
            "every bundle written is complete: run the same command again to continue"
        )
        return 130
    rate = result.tokens / max(result.seconds, 1e-9)
    out.print(
        Text.assemble(
            ("routed ", "bold"),
            (f"{result.tokens} tokens of {_count(len(result.written), 'document')}", "bold green"),
            f" in {result.seconds:.1f} s ({rate:.0f} tok/s) -> ",
            (visible(str(args.out)), "cyan"),
        )
    )
    if result.skipped:
        out.print(Text(f"{len(result.skipped)} document(s) already routed there: kept, not routed again"))
    if result.empty:
        out.print(Text(f"{len(result.empty)} empty document(s) skipped: {result.empty[:10]}"))
    out.print(Text(f"check them: inferoscope validate {shlex.quote(visible(str(args.out)))}"), soft_wrap=True)
    return EXIT_OK


def _count(number: int, noun: str) -> str:
    """``1 document``, ``2 documents``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def cmd_specialise(args: argparse.Namespace) -> int:
    out, _err = _consoles()
    from .specialise import SpecialiseError, describe, specialise

    if args.by != "source":
        return _fail("--by source is the only grouping so far")
    try:
        result = specialise(args.runs, permutations=args.permutations, seed=args.seed)
    except SpecialiseError as exc:
        return _fail(visible(str(exc), 400))
    if args.layer is not None:
        result.layers = [layer for layer in result.layers if layer.layer_index == args.layer]
        if not result.layers:
            return _fail(f"no MoE layer {args.layer} in these runs")
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(top=args.top), indent=2) + "\n")
        return EXIT_OK
    for line in describe(result, top=args.top):
        out.print(Text(visible(line, 500)), soft_wrap=True)
    return EXIT_OK


def cmd_import_engine(args: argparse.Namespace) -> int:
    out, _err = _consoles()
    missing = _capture_dependencies()
    if missing:
        return _capture_imports_missing(missing)
    from .capture.engine import import_engine
    from .engine_import import EngineImportError

    prompt_ids = None
    if args.prompt_ids is not None:
        try:
            prompt_ids = json.loads(Path(args.prompt_ids).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return _fail(f"--prompt-ids: {visible(str(exc), 200)}")
        if not isinstance(prompt_ids, list) or not all(isinstance(i, int) for i in prompt_ids):
            return _fail("--prompt-ids must hold a JSON list of token ids")
    run_id = args.run_id or Path(args.file).stem
    try:
        path, checked = import_engine(
            args.format,
            args.file,
            args.tokenizer,
            out=args.out,
            run_id=run_id,
            prompt_ids=prompt_ids,
            choice=args.choice,
        )
    except (EngineImportError, FileExistsError, RunIdError) as exc:
        return _fail(visible(str(exc), 600))
    out.print(Text(f"imported {checked.selected.shape[0]} positions -> {visible(str(path))}"), soft_wrap=True)
    for finding in checked.findings:
        out.print(Text(f"  {visible(finding, 300)}"), soft_wrap=True)
    out.print(
        Text(f"replay it: inferoscope replay {shlex.quote(str(path))} --model MODEL --out DIR"),
        soft_wrap=True,
    )
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    out, _err = _consoles()
    missing = _capture_dependencies()
    if missing:
        return _capture_imports_missing(missing)
    from .capture import CaptureError
    from .capture.engine import replay
    from .capture.loading import load_local

    if args.chunk < 0:
        return _fail("--chunk must be >= 0 (0: one pass)")
    problem = _unopenable(args.engine_run, "engine run")
    if problem is not None:
        return _fail(problem)
    try:
        model, tokenizer = load_local(args.model, device=args.device, dtype=args.dtype)
        run_id = args.run_id or f"{Path(args.engine_run).name}-replay"
        path = replay(args.engine_run, model, tokenizer, out=args.out, run_id=run_id, chunk=args.chunk)
    except (CaptureError, FileExistsError, RunIdError) as exc:
        return _fail(visible(str(exc), 500))
    out.print(Text(f"replayed -> {visible(str(path))}"), soft_wrap=True)
    out.print(
        Text(f"compare: inferoscope compare {shlex.quote(str(args.engine_run))} {shlex.quote(str(path))}"),
        soft_wrap=True,
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    out, err = _consoles()
    missing = _capture_dependencies()
    if missing:
        return _capture_imports_missing(missing)
    try:
        from .capture import CaptureError
        from .capture.demo import capture_demo
    except ImportError as exc:
        return _capture_imports_missing([exc.name or "torch"])
    try:
        target = run_dir_for(args.out, args.run_id)
        if (target.exists() or target.is_symlink()) and not args.overwrite:
            return _fail(f"{shlex.quote(str(target))} already exists; use --overwrite to replace it")
        run_dir, elapsed = _capture_with_progress(
            err, args.tokens, lambda step: _capture_demo_into(target, args, step, capture_demo)
        )
    except (CaptureError, FileExistsError, RunIdError) as exc:
        _error_line(f"inferoscope: {visible(str(exc), 500)}")
        return EXIT_UNREADABLE
    from .derive import write_derived

    summary = write_derived(run_dir)  # provisional motifs, so the app shows its motif channels
    out.print(
        Text(
            f"derived provisional motifs ({summary['matcher']}): {summary['global_motifs']} global, "
            f"{summary['layer_motifs']} layer motifs"
        )
    )
    _capture_summary(out, run_dir, elapsed)
    return EXIT_OK


def _capture_demo_into(
    target: Path, args: argparse.Namespace, step: Callable[[int], None], capture: Callable[..., Path]
) -> Path:
    """Capture the demo run; with --overwrite the old bundle is replaced only once the new one exists."""
    if not (target.exists() or target.is_symlink()):
        return capture(args.out, args.run_id, args.tokens, step)
    staging = target.parent / f".{target.name}.demo-{os.getpid()}"
    try:
        fresh = capture(staging, args.run_id, args.tokens, step)
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(fresh, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferoscope",
        description="Capture, validate and inspect Mixture-of-Experts routing run bundles.",
    )
    parser.add_argument("--version", action="version", version=f"inferoscope {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inspect = commands.add_parser("inspect", help="summarise one run bundle")
    inspect.add_argument("run_dir", metavar="RUN_DIR", help="the run bundle folder")
    inspect.add_argument("--json", action="store_true", help="machine-readable summary")
    inspect.set_defaults(handler=cmd_inspect)
    validate = commands.add_parser("validate", help="report every contract issue of bundles")
    validate.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="one or more run bundle folders")
    validate.add_argument("--json", action="store_true", help="machine-readable issues")
    validate.add_argument(
        "--max-issues",
        type=int,
        default=200,
        metavar="N",
        help="show at most N issues per bundle (all are counted; default 200)",
    )
    validate.set_defaults(handler=cmd_validate)
    capture = commands.add_parser(
        "capture", help="generate with a local MoE checkpoint and record its routing"
    )
    capture.add_argument(
        "--model", required=True, type=Path, metavar="PATH", help="local checkpoint directory"
    )
    capture.add_argument("--prompt", required=True, help="the prompt text")
    capture.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate (default 64)"
    )
    capture.add_argument("--out", type=Path, default=Path("runs"), help="bundle root (default: runs/)")
    capture.add_argument(
        "--run-id", default=None, metavar="ID", help="run_id and folder name (default: model and time)"
    )
    capture.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="where to run (auto: cuda if present)",
    )
    capture.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weights dtype (auto: the checkpoint's)",
    )
    capture.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    capture.add_argument("--seed", type=int, default=None, help="seed for sampling (recorded)")
    capture.add_argument("--model-id", default=None, help="model_id to record (default: the path)")
    capture.add_argument(
        "--format",
        choices=("v0.2", "v0.1"),
        default="v0.2",
        help="bundle contract: v0.2 (selection, mixing weights, scores and prefill in array files; "
        "default) or v0.1 (NDJSON, for families v0.1.0 can hold)",
    )
    capture.add_argument(
        "--store-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="v0.2: dtype of the stored scores and weights (default float32)",
    )
    capture.set_defaults(handler=cmd_capture)
    route = commands.add_parser(
        "route", help="route every position of given text (teacher forcing): one v0.2 bundle per document"
    )
    route.add_argument("--model", required=True, type=Path, metavar="PATH", help="local checkpoint directory")
    route.add_argument("--text", type=Path, metavar="FILE", help="documents separated by blank lines")
    route.add_argument("--jsonl", type=Path, metavar="FILE", help="one JSON object per line")
    route.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    route.add_argument(
        "--source-field", default=None, metavar="FIELD", help="JSONL field holding a source label"
    )
    route.add_argument("--source", default=None, help="source label for every document of a --text file")
    route.add_argument(
        "--batch", type=int, default=8, metavar="N", help="documents per forward pass (default 8)"
    )
    route.add_argument("--max-tokens-per-doc", type=int, default=None, metavar="N", help="truncate documents")
    route.add_argument("--out", required=True, type=Path, metavar="DIR", help="where the bundles go")
    route.add_argument("--prefix", default="doc", help="bundle names: PREFIX-000000, ... (default doc)")
    route.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="where to run (auto: cuda if present)",
    )
    route.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weights dtype (auto: the checkpoint's)",
    )
    route.add_argument("--model-id", default=None, help="model_id to record (default: the path)")
    route.set_defaults(handler=cmd_route)
    engine = commands.add_parser(
        "import-engine", help="a serving engine's routed experts (vLLM, SGLang) as a top-k-only v0.2 run"
    )
    engine.add_argument("file", metavar="FILE", help="the engine's output (JSON, or NPZ for vLLM)")
    engine.add_argument("--format", required=True, choices=("vllm", "sglang"), help="which engine wrote it")
    engine.add_argument(
        "--tokenizer",
        required=True,
        type=Path,
        metavar="PATH",
        help="the model's checkpoint (tokenizer and config)",
    )
    engine.add_argument(
        "--prompt-ids", default=None, metavar="FILE", help="JSON list of the prompt's token ids"
    )
    engine.add_argument(
        "--choice", type=int, default=0, metavar="N", help="vLLM HTTP response: which choice (default 0)"
    )
    engine.add_argument("--out", required=True, type=Path, metavar="DIR", help="bundle root")
    engine.add_argument("--run-id", default=None, metavar="ID", help="run_id (default: the file's name)")
    engine.set_defaults(handler=cmd_import_engine)
    replay_cmd = commands.add_parser(
        "replay", help="teacher-force an engine run's tokens through the transformers model, to compare"
    )
    replay_cmd.add_argument("engine_run", metavar="ENGINE_RUN", help="a run written by import-engine")
    replay_cmd.add_argument(
        "--model", required=True, type=Path, metavar="PATH", help="local checkpoint directory"
    )
    replay_cmd.add_argument("--out", required=True, type=Path, metavar="DIR", help="bundle root")
    replay_cmd.add_argument(
        "--run-id", default=None, metavar="ID", help="run_id (default: ENGINE_RUN-replay)"
    )
    replay_cmd.add_argument(
        "--chunk",
        type=int,
        default=512,
        metavar="N",
        help="positions per forward pass; longer traces continue through the KV cache (0: one pass)",
    )
    replay_cmd.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="where to run (auto: cuda if present)",
    )
    replay_cmd.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto", help="weights dtype"
    )
    replay_cmd.set_defaults(handler=cmd_replay)
    special = commands.add_parser(
        "specialise", help="which experts lean to which source, against a document-level null"
    )
    special.add_argument(
        "runs", metavar="RUNS", nargs="+", help="run folders, or run-set folders holding them"
    )
    special.add_argument("--by", default="source", help="what to group tokens by (source)")
    special.add_argument("--layer", type=int, default=None, metavar="L", help="one MoE layer only")
    special.add_argument("--permutations", type=int, default=200, metavar="N", help="null permutations (200)")
    special.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    special.add_argument("--top", type=int, default=3, metavar="N", help="experts listed per source")
    special.add_argument("--json", action="store_true", help="machine-readable result")
    special.set_defaults(handler=cmd_specialise)
    compare = commands.add_parser("compare", help="token-aligned routing comparison of two runs")
    compare.add_argument("run_a", metavar="RUN_A", help="the first run bundle")
    compare.add_argument("run_b", metavar="RUN_B", help="the second run bundle, same prompt")
    compare.add_argument("--json", action="store_true", help="machine-readable comparison")
    compare.add_argument("--top", type=int, default=5, metavar="N", help="how many worst tokens to list")
    compare.set_defaults(handler=cmd_compare)
    derive = commands.add_parser(
        "derive", help="write provisional motifs (derived.ndjson, ledger, contingency)"
    )
    derive.add_argument("run_dir", metavar="RUN_DIR", help="a valid run bundle folder")
    derive.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="cosine threshold of the online matcher, in (0, 1] (default 0.9)",
    )
    derive.add_argument("--exact", action="store_true", help="exact-fingerprint matcher (the baseline)")
    derive.add_argument(
        "--cap",
        type=int,
        default=None,
        metavar="N",
        help="approximate matcher: match only against the N largest motifs (and the newest), so a "
        "run without structure costs O(N) per token; named in derivation_config_id",
    )
    derive.add_argument(
        "--scramble",
        choices=("tokens", "experts"),
        default=None,
        help="derive a scrambled null-model copy instead (written beside the run)",
    )
    derive.add_argument("--seed", type=int, default=0, help="seed of the scramble")
    derive.add_argument("--out", type=Path, default=None, help="where the scrambled copy goes")
    derive.add_argument("--json", action="store_true", help="machine-readable summary")
    derive.set_defaults(handler=cmd_derive)
    export = commands.add_parser("export", help="write a run as Parquet, one row per token x layer")
    export.add_argument("run_dir", metavar="RUN_DIR", help="the run bundle folder")
    export.add_argument(
        "--parquet",
        required=True,
        type=Path,
        metavar="OUT.parquet",
        help="the Parquet file to write, outside the bundle (its folder is created)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    export.add_argument("--force", action="store_true", help="export even if the bundle has issues")
    export.set_defaults(handler=cmd_export)
    convert = commands.add_parser(
        "convert", help="rewrite a run as contract v0.1 (NDJSON) or v0.2 (array files)"
    )
    convert.add_argument("run_dir", metavar="RUN_DIR", help="a valid run bundle folder")
    convert.add_argument("--to", required=True, choices=("v0.1", "v0.2"), help="the target contract")
    convert.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="bundle root; the run goes to DIR/<run_id>"
    )
    convert.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16", "float64"),
        default="auto",
        help="v0.2 score dtype (auto: float32 when every value is exact in it, else float64)",
    )
    convert.add_argument("--run-id", default=None, metavar="ID", help="a new run_id (default: the same)")
    convert.set_defaults(handler=cmd_convert)
    demo = commands.add_parser(
        "demo", help="capture a demo run from the micro model shipped with inferoscope"
    )
    demo.add_argument("--out", type=Path, default=Path("runs"), help="bundle root (default: runs/)")
    demo.add_argument("--run-id", default="demo-run", metavar="ID", help="run_id (default demo-run)")
    demo.add_argument("--tokens", type=int, default=200, metavar="N", help="tokens to sample (default 200)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing demo run")
    demo.set_defaults(handler=cmd_demo)
    tui = commands.add_parser("tui", help="step through a run token by token in the terminal")
    tui.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        nargs="?",
        help="the run bundle (default: the example run shipped with inferoscope)",
    )
    tui.add_argument("--token", type=int, metavar="N", help="open at token N")
    tui.add_argument(
        "--compare",
        type=Path,
        metavar="RUN_B",
        default=None,
        help="show a second run of the same prompt under the first, disagreements marked",
    )
    tui.set_defaults(handler=cmd_tui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # never a traceback for the user; one line and an exit code
        if os.environ.get("INFEROSCOPE_DEBUG"):
            raise
        message = visible(f"{type(exc).__name__}: {exc}", 300)
        print(f"inferoscope: error: {message} (set INFEROSCOPE_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_UNREADABLE
