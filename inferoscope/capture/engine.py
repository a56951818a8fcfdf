"""Engine runs in and out of contract v0.2: import a serving engine's routed experts as a top-k-only
bundle, and replay its exact token ids through the transformers model to compare the two."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..bundle.reader import RunReader
from ..bundle.writer_v02 import RunWriter, default_array_paths
from ..engine_import import Checked, EngineImportError, ModelLayers, check_trace, read_sglang, read_vllm
from ..extraction.builders import build_layer_grid_layout, build_manifest
from ..versions import V02_ARTIFACT_VERSIONS
from .errors import CaptureError
from .loading import causal_lm_class
from .routers import find_routers


def model_layers(model_path: Path | str) -> ModelLayers:
    """Decoder layers, MoE layers, experts and k of a checkpoint, from its config (no weights)."""
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EngineImportError(f"cannot read the model config at {model_path}: {exc}") from None
    cls = causal_lm_class(config)
    if cls is None:
        raise EngineImportError(f"{model_path}: no causal LM class for model type {config.model_type!r}")
    with torch.device("meta"):
        model = cls(config)
    sites = find_routers(model)
    router = sites[0].module
    experts = int(getattr(router, "num_experts", 0) or getattr(config, "num_experts", 0) or 0)
    experts = experts or int(
        getattr(config, "n_routed_experts", 0) or getattr(config, "num_local_experts", 0)
    )
    top_k = int(getattr(router, "top_k", 0) or getattr(config, "num_experts_per_tok", 0))
    return ModelLayers(int(config.num_hidden_layers), [s.layer_index for s in sites], experts, top_k)


def import_engine(
    engine: str,
    path: Path | str,
    model_path: Path | str,
    *,
    out: Path | str,
    run_id: str,
    prompt_ids: list[int] | None = None,
    choice: int = 0,
) -> tuple[Path, Checked]:
    """Write the engine run as a v0.2 bundle (``run_kind: engine``); EngineImportError, naming
    every problem, where the file disagrees with the model (nothing is written then)."""
    from transformers import AutoTokenizer

    if not Path(model_path).is_dir():
        raise EngineImportError(f"--tokenizer {model_path}: no such checkpoint directory")
    layers = model_layers(model_path)
    file = Path(path)
    if engine == "sglang":
        trace = read_sglang(file, prompt_ids, layers.decoder_layers, layers.top_k)
    elif engine == "vllm":
        trace = read_vllm(file, prompt_ids, choice)
    else:
        raise EngineImportError(f"unknown engine format {engine!r}: vllm or sglang")
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    past = [t for t in trace.token_ids if not 0 <= t < len(tokenizer)]
    if past:
        raise EngineImportError(
            f"{len(past)} token ids are outside the tokenizer's {len(tokenizer)} (first {past[0]}): "
            "a tokenizer of another model?"
        )
    checked = check_trace(trace, layers)
    if checked.problems:
        raise EngineImportError("; ".join(checked.problems))
    rows = checked.selected.shape[0]
    paths = {"selected": default_array_paths("moe")["selected"]}
    manifest = build_manifest(
        run_id=run_id,
        model_id=str(model_path),
        tokenizer_id=str(model_path),
        prompt_text="",
        derivation_version="motifs/v0.1.0-alpha",
        derivation_config_id="motifs/default-alpha",
        capture_config={
            "engine": trace.engine,
            "engine_file": str(file),
            "token_ids": trace.token_ids,
            "prompt_tokens": trace.prompt_tokens,
            "first_row_position": trace.start,
            "rows": "one per position fed forward, from first_row_position; token t is position "
            "first_row_position + t (the last generated token has no row)",
            "findings": checked.findings,
        },
    )
    manifest.update(
        schema_version="manifest/v0.2.0",
        artifact_versions=dict(V02_ARTIFACT_VERSIONS),
        prompt={"text": ""},
        run_kind="engine",
        routing={
            "float_dtype": "float32",
            "groups": [
                {
                    "name": "moe",
                    "layers": layers.moe_layers,
                    "num_experts": layers.experts,
                    "top_k": layers.top_k,
                    "score_function": "unknown",
                    "selection": {"rule": "unknown", "bias": False},
                    "mixing": {"rule": "unchecked", "scale": 1.0, "name": "not returned by the engine"},
                    "shared_experts": 0,
                    "arrays": paths,
                }
            ],
        },
    )
    layout = build_layer_grid_layout(
        run_id=run_id,
        layout_id="default-grid",
        layer_expert_counts=[(i, layers.experts) for i in layers.moe_layers],
    )
    writer = RunWriter(out, manifest)  # streamed: the token lines are made a block at a time
    try:
        for first in range(0, rows, IMPORT_BLOCK):
            block = range(first, min(rows, first + IMPORT_BLOCK))
            events = [
                {
                    "event_type": "token_complete",
                    "schema_version": "raw/v0.2.0",
                    "run_id": run_id,
                    "token_index": t,
                    "token_id": trace.token_ids[trace.start + t],
                    "token_text": tokenizer.decode([trace.token_ids[trace.start + t]]),
                    "context_length": trace.start + t + 1,
                }
                for t in block
            ]
            writer.add_tokens(events, {"moe": {"selected": checked.selected[first : block.stop]}})
        return writer.close(layout), checked
    except BaseException:
        writer.abort()
        raise


#: token lines made and written at a time by import-engine
IMPORT_BLOCK = 4096


#: positions per forward pass of a replay; a longer sequence continues through the KV cache
REPLAY_CHUNK = 512


def replay(
    engine_run: Path | str,
    model: Any,
    tokenizer: Any,
    *,
    out: Path | str,
    run_id: str,
    chunk: int = REPLAY_CHUNK,
) -> Path:
    """Teacher-force the engine run's exact token ids through ``model`` and record its routing at
    the same positions, as a v0.2 bundle whose token t is the engine run's token t.

    A sequence longer than ``chunk`` positions is fed ``chunk`` at a time through the model's KV
    cache (chunked prefill, as the engines themselves prefill) and written as it goes, so what
    the replay holds is one chunk's routing, never the whole trace's; ``chunk=0``: one pass."""
    from .route import Document, write_chunks

    reader = RunReader(engine_run)
    config = (reader.manifest or {}).get("capture_config") or {}
    ids, start = config.get("token_ids"), config.get("first_row_position", 0)
    if reader.profile != "v0.2" or not isinstance(ids, list) or not isinstance(start, int):
        raise CaptureError(
            f"{engine_run}: not an imported engine run (inferoscope import-engine writes them)"
        )
    rows = len(reader)
    feed = ids[: start + rows]
    vocabulary = _vocabulary(model)
    if vocabulary is not None and feed and not 0 <= min(feed) <= max(feed) < vocabulary:
        past = [t for t in feed if not 0 <= t < vocabulary]
        raise CaptureError(
            f"{len(past)} of the engine run's token ids do not fit this model's vocabulary of {vocabulary} "
            f"(first {past[0]}): the engine served another model?"
        )
    sites = find_routers(model)
    return write_chunks(
        model,
        tokenizer,
        sites,
        Document(0, "", "replay"),
        _replay_chunks(model, sites, feed, start, chunk),
        total=rows,
        out=Path(out),
        run_id=run_id,
        model_id=str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__),
        tokenizer_id=str(getattr(tokenizer, "name_or_path", "")),
        store_dtype="float32",
        first_position=start,
    )


def _vocabulary(model: Any) -> int | None:
    """The number of rows of the model's input embedding (what a token id must be below)."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError, ValueError):
        return None


def _replay_chunks(model: Any, sites: list[Any], feed: list[int], start: int, chunk: int) -> Iterator[Any]:
    """(ids, logits, weights, selected) of the recorded positions (``start`` on), a chunk at a time."""
    import torch
    from transformers import DynamicCache

    from .route import _route_batch

    device = next(model.parameters()).device
    if chunk <= 0 or len(feed) <= chunk:
        input_ids = torch.tensor([feed], dtype=torch.long, device=device)
        logits, weights, selected = _route_batch(model, sites, input_ids, torch.ones_like(input_ids))
        span = slice(start, len(feed))
        yield feed[span], logits[0, span], None if weights is None else weights[0, span], selected[0, span]
        return
    cache = DynamicCache(config=model.config)
    for first in range(0, len(feed), chunk):
        piece = feed[first : first + chunk]
        input_ids = torch.tensor([piece], dtype=torch.long, device=device)
        try:
            logits, weights, selected = _route_batch(model, sites, input_ids, None, cache=cache)
        except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CaptureError(
                f"this model cannot continue a sequence through its cache ({type(exc).__name__}: {exc}); "
                "replay in one pass with --chunk 0"
            ) from exc
        keep = max(0, start - first)  # positions before the first row are fed, not recorded
        if keep >= len(piece):
            continue
        yield (
            piece[keep:],
            logits[0, keep:],
            None if weights is None else weights[0, keep:],
            selected[0, keep:],
        )
