"""Export a run to Parquet: one row per token x MoE layer, for DuckDB, Polars or Spark.

``router_probs`` is a fixed-size list when every layer has the same number of experts (the
common case), else a plain list. Written to a temporary file beside the target and renamed
into place, so a half-written file never appears under the target name. Needs ``pyarrow``
(extra ``export``).

What cannot be read or represented is skipped and counted, never a crash: an unreadable event,
a layer whose values do not have their contract types. ``token_id`` may have any number of
digits: ``token_id`` holds it when it fits 64 bits (else null), ``token_id_text`` always holds
its decimal digits. Strings are valid UTF-8 (a lone surrogate is written as its escape).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.errors import WRITE_FAILURES
from .bundle.reader import EventReadError, RunReader
from .textsafe import without_surrogates

ROWS_PER_GROUP = 65_536
#: read a v0.1.0 raw trace a block at a time in worker processes (False: event by event, the
#: reference the block path is tested against)
READ_BY_BLOCKS = True
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)


@dataclass(slots=True)
class ExportResult:
    """Rows written, and what was skipped (counted by reason; the first few located)."""

    rows: int = 0
    skipped_events: int = 0
    skipped_layers: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str, *, event: bool) -> None:
        if event:
            self.skipped_events += 1
        else:
            self.skipped_layers += 1
        self.reasons[reason] += 1
        if len(self.first) < 5:
            self.first.append(f"{where}: {reason}")


class _Unrepresentable(ValueError):
    """A value that does not have the type its column needs."""


def export_parquet(
    run_dir: Path | str,
    out: Path | str,
    *,
    overwrite: bool = False,
    before_replace: Callable[[], None] | None = None,
    validate: bool = False,
) -> ExportResult:
    """Write ``out``; returns rows written and what was skipped. FileExistsError unless ``overwrite``.

    ``validate``: the bundle must validate clean, else RunBundleError and nothing is written; a
    v0.1.0 trace is checked in the same pass that exports it (each line decoded once), other
    bundles by a check beside the export. ``before_replace`` runs once the file is written,
    before it takes its name: if it raises, nothing is left behind.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (use --overwrite)")
    reader = RunReader(run_dir)
    if target.resolve().parent.is_relative_to(reader.run_dir.resolve()):
        raise FileExistsError(f"{target} is inside the bundle {reader.run_dir}: write the export elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    by_blocks = READ_BY_BLOCKS and reader.profile == "v0.1" and reader.raw_problem is None
    checked: Any = None  # the raw trace's checks, merged as the blocks are exported
    if validate and by_blocks:
        from .bundle.report import DEFAULT_MAX_KEPT_ISSUES
        from .bundle.scan import SegmentMerger

        checked = SegmentMerger(reader.manifest, DEFAULT_MAX_KEPT_ISSUES)
    if validate and checked is None:  # checked beside the export, before the file is named
        from .bundle.loader import ValidationBeside

        beside = ValidationBeside(run_dir)
        outer = before_replace

        def before_replace() -> None:
            beside.wait()
            if outer is not None:
                outer()

    run_id = reader.manifest.get("run_id") if isinstance(reader.manifest, dict) else None
    run_id = without_surrogates(run_id) if isinstance(run_id, str) else ""
    result = ExportResult()
    if reader.profile == "v0.2" and reader.routing is not None:
        from .export_v02 import export_v02

        with _written_as(target) as partial:
            export_v02(reader, partial, run_id, result)
            if before_replace is not None:
                before_replace()
        return result
    count = 1 << 62 if by_blocks else len(reader)  # read by blocks: no index, no count first
    experts = _shared_expert_count(reader, count)
    probs_type = pa.list_(pa.float64(), experts) if experts else pa.list_(pa.float64())
    schema = pa.schema(
        [
            ("run_id", pa.string()),
            ("token_index", pa.int64()),
            ("token_id", pa.int64()),
            ("token_id_text", pa.string()),
            ("token_text", pa.string()),
            ("context_length", pa.int64()),
            ("decode_duration_ms", pa.float64()),
            ("layer_index", pa.int32()),
            ("num_total_experts", pa.int32()),
            ("num_active_experts", pa.int32()),
            ("router_probs", probs_type),
            ("topk_indices", pa.list_(pa.int32())),
            ("topk_probs", pa.list_(pa.float64())),
            ("top1_expert", pa.int32()),
            ("entropy", pa.float64()),
            ("normalized_entropy", pa.float64()),
            ("top1_prob", pa.float64()),
            ("top1_top2_margin", pa.float64()),
        ]
    )

    def write(rows: list[_Row], last: bool) -> None:
        if rows or (last and result.rows == 0):
            writer.write_table(_table(rows, schema, experts, result))

    with _written_as(target) as partial:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            if by_blocks:
                _write_by_blocks(writer, reader, run_id, schema, experts, result, checked)
            else:
                rows: list[_Row] = []
                for position in range(count):
                    _add_event(rows, reader, position, run_id, result)
                    if len(rows) >= ROWS_PER_GROUP:
                        write(rows, last=False)
                        rows = []
                write(rows, last=True)
        if checked is not None:
            _raise_unless_clean(reader, run_dir, checked)
        if before_replace is not None:
            before_replace()
    return result


@contextmanager
def _written_as(target: Path) -> Iterator[Path]:
    """A partial file beside ``target`` to write, named ``target`` when the block ends cleanly;
    otherwise removed, and a disk error raised naming ``target``."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        yield partial
        os.replace(partial, target)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        named = _named(exc, target)
        if named is exc:
            raise
        raise named from exc


def _named(exc: BaseException, target: Path) -> BaseException:
    """A disk error met while the file was written, naming the file it was for (pyarrow's errors
    and the sink's name none, or name the partial file, which is gone)."""
    if not isinstance(exc, OSError) or exc.errno not in WRITE_FAILURES:
        return exc
    return OSError(exc.errno, f"cannot write {target}: {os.strerror(exc.errno)}")


class _Pending:
    """Rows waiting for their row group, in event order: Arrow tables (events read by blocks)
    and row tuples (events read one by one); cut at the first event that reaches the group size."""

    def __init__(self, writer: Any, schema: Any, experts: int | None, result: ExportResult) -> None:
        self.writer, self.schema, self.experts, self.result = writer, schema, experts, result
        self.pieces: list[Any] = []
        self.rows = 0  # candidate rows (before any is skipped), as the group size counts them

    def add_table(self, table: Any, rows: int) -> None:
        self.pieces.append(table)
        self.rows += rows

    def add_rows(self, rows: list[_Row]) -> None:
        if rows:
            self.pieces.append(rows)
            self.rows += len(rows)

    def flush(self, last: bool = False) -> None:
        if not self.pieces and not (last and self.result.rows == 0):
            return
        tables = []
        for piece in self.pieces:
            if isinstance(piece, list):
                tables.append(_table(piece, self.schema, self.experts, self.result))
            else:
                self.result.rows += piece.num_rows
                tables.append(piece)
        table = _one_group(tables) if tables else _arrow(self.schema, [])
        self.writer.write_table(table)
        self.pieces, self.rows = [], 0


def _raise_unless_clean(reader: RunReader, run_dir: Path | str, checked: Any) -> None:
    """The bundle's validation, its raw trace's pass merged from the export's blocks."""
    from .bundle.errors import bundle_error

    report = reader.validate(raw_result=checked.result())
    if not report.ok:
        raise bundle_error(str(run_dir), report.issues, report.counts_by_code())


def _export_blocks(reader: RunReader, checked: Any) -> Iterator[Any]:
    """The raw trace's export blocks; with ``checked``, also validated in the same pass (each
    block's checks appended to it, in file order)."""
    from .bundle.blocks import ordered_blocks
    from .export_blocks import decode_export_range

    if checked is None:
        yield from ordered_blocks(reader.raw_path, decode_export_range)
        return
    from .bundle.reader import DEFAULT_CHUNK_EVENTS
    from .bundle.report import DEFAULT_MAX_KEPT_ISSUES
    from .bundle.scan import SegmentJob
    from .export_fused import fused_decoder

    job = SegmentJob(
        reader.raw_path, reader.manifest or {}, 0, None, DEFAULT_CHUNK_EVENTS, DEFAULT_MAX_KEPT_ISSUES
    )
    for fused in ordered_blocks(reader.raw_path, fused_decoder(job)):
        checked.add(fused.checked)
        fused.export.start = fused.start
        yield fused.export


def _one_group(tables: list[Any]) -> Any:
    """The row group's table: the pieces as chunks, not copied into one (a group of OLMoE rows
    is ~46 MB, most of it the fixed-size router_probs), but for the string and variable-length
    list columns, whose Parquet bytes depend on the chunking; the file is byte for byte the one
    the event-by-event path writes (tested)."""
    import pyarrow as pa

    table = pa.concat_tables(tables)
    for position, column in enumerate(table.schema):
        if pa.types.is_string(column.type) or pa.types.is_list(column.type):
            table = table.set_column(position, column, table.column(position).combine_chunks())
    return table


def _write_by_blocks(
    writer: Any,
    reader: RunReader,
    run_id: str,
    schema: Any,
    experts: int | None,
    result: ExportResult,
    checked: Any = None,
) -> None:
    """The whole raw trace, a block of events at a time (workers decode, this process writes);
    row groups and skips exactly as event by event."""
    from .export_blocks import arrow_table

    pending = _Pending(writer, schema, experts, result)
    for block in _export_blocks(reader, checked):
        fits = experts is None or block.experts == experts
        regular = block.regular if fits else np.zeros(block.count, dtype=bool)
        layers = block.ints.shape[1] if block.ints.ndim == 3 else 0
        done = 0  # regular events of the block already taken
        r = 0
        while r < block.count:
            if not regular[r]:
                rows: list[_Row] = []
                _add_event(rows, reader, block.start + r, run_id, result)
                pending.add_rows(rows)
                r += 1
            else:
                run = r
                while run < block.count and regular[run]:
                    run += 1
                need = -(-(ROWS_PER_GROUP - pending.rows) // layers)  # events until the group is full
                take = min(run - r, max(need, 1))
                pending.add_table(
                    arrow_table(block, slice(done, done + take), run_id, schema, experts), take * layers
                )
                done, r = done + take, r + take
            if pending.rows >= ROWS_PER_GROUP:
                pending.flush()
    pending.flush(last=True)


#: one row before it is written: where it comes from, the event's columns, the layer object
_Row = tuple[str, tuple[Any, ...], Any]


def _add_event(rows: list[_Row], reader: RunReader, position: int, run_id: str, result: ExportResult) -> None:
    """The rows of one event (its layers are checked when the batch is written), or why it is skipped."""
    where = f"event {position}"
    try:
        event = reader.event(position)
        head = (  # the event's columns, in the schema's order
            run_id,
            _int(event.get("token_index"), INT64),
            _int(event.get("token_id"), INT64, nullable_if_huge=True),
            _digits(event.get("token_id")),
            without_surrogates(_str(event.get("token_text"))),
            _int(event.get("context_length"), INT64),
            _float(_dict(event.get("timing_ms")).get("decode_duration")),
        )
        layers = event.get("layers")
        if not isinstance(layers, list):
            raise _Unrepresentable("layers is not a list")
    except EventReadError:
        result.skip("unreadable event", where, event=True)
        return
    except _Unrepresentable as exc:
        result.skip(str(exc), where, event=True)
        return
    rows.extend((f"{where}, layers[{number}]", head, layer) for number, layer in enumerate(layers))


def _table(rows: list[_Row], schema: Any, experts: int | None, result: ExportResult) -> Any:
    """The Arrow table of ``rows``. Fast path: the values as read; if Arrow refuses one, every
    value is checked and the rows that cannot be represented are skipped and counted."""
    import pyarrow as pa

    try:
        table = _arrow(
            schema, [head + _layer_values(layer, experts, strict=False) for _, head, layer in rows]
        )
    except (_Unrepresentable, pa.ArrowException, TypeError, ValueError, OverflowError):
        kept = []
        for where, head, layer in rows:
            try:
                kept.append(head + _layer_values(layer, experts, strict=True))
            except _Unrepresentable as exc:
                result.skip(str(exc), where, event=False)
        table = _arrow(schema, kept)
    result.rows += table.num_rows
    return table


def _arrow(schema: Any, rows: list[tuple[Any, ...]]) -> Any:
    """A table from row tuples in the schema's column order (transposed in one step)."""
    import pyarrow as pa

    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema.names]
    return pa.table(
        {name: list(values) for name, values in zip(schema.names, columns, strict=True)}, schema=schema
    )


def _layer_values(layer: Any, experts: int | None, *, strict: bool) -> tuple[Any, ...]:
    """One layer's columns; ``strict`` checks every number (else only the containers)."""
    layer = _dict(layer)
    probs = _list(layer.get("router_probs"), "router_probs")
    if experts is not None and len(probs) != experts:
        raise _Unrepresentable(f"router_probs has {len(probs)} values, the column holds {experts}")
    topk = _list(layer.get("topk_indices"), "topk_indices")
    topk_probs = _list(layer.get("topk_probs"), "topk_probs")
    if strict:
        probs, topk_probs = [_float(v) for v in probs], [_float(v) for v in topk_probs]
        topk = [_int(i, INT32) for i in topk]
    return (  # the layer's columns, in the schema's order
        _int(layer.get("layer_index"), INT32),
        _int(layer.get("num_total_experts"), INT32),
        _int(layer.get("num_active_experts"), INT32),
        probs,
        topk,
        topk_probs,
        topk[0] if topk else None,
        _float(layer.get("entropy")),
        _float(layer.get("normalized_entropy")),
        _float(layer.get("top1_prob")),
        _float(layer.get("top1_top2_margin")),
    )


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Unrepresentable(f"expected an object, found {type(value).__name__}")
    return value


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Unrepresentable(f"{name} is not a list")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unrepresentable(f"expected text, found {type(value).__name__}")
    return value


def _int(value: Any, bounds: tuple[int, int], *, nullable_if_huge: bool = False) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unrepresentable(f"expected an integer, found {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        if nullable_if_huge:
            return None
        raise _Unrepresentable(f"integer with {len(str(abs(value)))} digits does not fit its column")
    return value


def _digits(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unrepresentable(f"token_id is not an integer ({type(value).__name__})")
    return str(value)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Unrepresentable(f"expected a number, found {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise _Unrepresentable("a number past the float range") from None
    if math.isnan(number):
        raise _Unrepresentable("NaN")
    return number


def _shared_expert_count(reader: RunReader, count: int) -> int | None:
    """The expert count of every layer of the first readable event, when they agree."""
    for position in range(min(count, 64)):
        try:
            layers = reader.event(position).get("layers")
        except EventReadError:
            continue
        except IndexError:  # past the last event
            return None
        if not isinstance(layers, list):
            continue
        sizes = {
            len(la["router_probs"])
            for la in layers
            if isinstance(la, dict) and isinstance(la.get("router_probs"), list)
        }
        return sizes.pop() if len(sizes) == 1 else None
    return None
