"""Export a run to Parquet: one row per token x MoE layer, for DuckDB, Polars or Spark.

``router_probs`` is a fixed-size list when every layer has the same number of experts (the
common case), else a plain list. Written to a temporary file beside the target and renamed
into place, so a half-written file never appears under the target name. Needs ``pyarrow``
(extra ``export``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .bundle.reader import RunReader
from .textsafe import without_surrogates

ROWS_PER_GROUP = 65_536


def export_parquet(run_dir: Path | str, out: Path | str, *, overwrite: bool = False) -> int:
    """Write ``out``; returns the number of rows. FileExistsError unless ``overwrite``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (use --overwrite)")
    reader = RunReader(run_dir)
    if target.resolve().parent.is_relative_to(reader.run_dir.resolve()):
        raise FileExistsError(f"{target} is inside the bundle {reader.run_dir}: write the export elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    count = len(reader)
    run_id = (reader.manifest or {}).get("run_id", "")
    experts = _shared_expert_count(reader, count)
    probs_type = pa.list_(pa.float64(), experts) if experts else pa.list_(pa.float64())
    schema = pa.schema(
        [
            ("run_id", pa.string()),
            ("token_index", pa.int64()),
            ("token_id", pa.int64()),
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
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    rows = 0
    try:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            batch: dict[str, list[Any]] = {name: [] for name in schema.names}
            for position in range(count):
                event = reader.event(position)
                for layer in event["layers"]:
                    _append_row(batch, run_id, event, layer)
                    rows += 1
                if len(batch["run_id"]) >= ROWS_PER_GROUP:
                    writer.write_table(pa.table(batch, schema=schema))
                    batch = {name: [] for name in schema.names}
            if batch["run_id"] or rows == 0:
                writer.write_table(pa.table(batch, schema=schema))
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return rows


def _shared_expert_count(reader: RunReader, count: int) -> int | None:
    if count == 0:
        return None
    sizes = {len(layer["router_probs"]) for layer in reader.event(0)["layers"]}
    return sizes.pop() if len(sizes) == 1 else None


def _append_row(
    batch: dict[str, list[Any]], run_id: str, event: dict[str, Any], layer: dict[str, Any]
) -> None:
    probs = layer["router_probs"]
    values = {
        "run_id": without_surrogates(run_id),
        "token_index": event["token_index"],
        "token_id": event["token_id"],
        "token_text": without_surrogates(event["token_text"]),  # Arrow strings must be valid UTF-8
        "context_length": event["context_length"],
        "decode_duration_ms": event["timing_ms"]["decode_duration"],
        "layer_index": layer["layer_index"],
        "num_total_experts": layer["num_total_experts"],
        "num_active_experts": layer["num_active_experts"],
        "router_probs": probs,
        "topk_indices": layer["topk_indices"],
        "topk_probs": layer["topk_probs"],
        "top1_expert": layer["topk_indices"][0] if layer["topk_indices"] else None,
        "entropy": layer["entropy"],
        "normalized_entropy": layer["normalized_entropy"],
        "top1_prob": layer["top1_prob"],
        "top1_top2_margin": layer["top1_top2_margin"],
    }
    for name, value in values.items():
        batch[name].append(value)
