"""Teacher-forced routing of given text: every position of every document, no generation.

Documents are routed in right-padded batches (the attention mask keeps padding out of every real
position; with causal attention a real token never sees the padding after it) and the padding
rows are dropped before anything is recorded. Each document becomes its own contract v0.2
bundle (``run_kind: teacher_forced``; per token ``document_index`` and ``source``), written
atomically: a run that is interrupted leaves only complete, valid bundles, and a rerun skips
the documents already written and continues. A folder of such bundles is a run set.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.reader import RunReader
from ..bundle.writer_v02 import RunWriter
from ..extraction.builders import build_layer_grid_layout, build_manifest
from ..routing import DEFAULT_TOLERANCE
from ..run_ids import run_dir_for
from ..versions import V02_ARTIFACT_VERSIONS
from .errors import CaptureError
from .hooks import split_router_output
from .routers import RouterSite, find_routers
from .v02 import (
    DERIVATION_CONFIG_ID,
    DERIVATION_VERSION,
    MODEL_TOLERANCE,
    _capture_config,
    _groups,
    _layer_rules,
    _shared_experts,
)


@dataclass(frozen=True, slots=True)
class Document:
    index: int
    text: str
    source: str | None = None


@dataclass(slots=True)
class RouteResult:
    """What a corpus run did: bundles written and skipped (already there), tokens, time."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)  # documents with no tokens
    tokens: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _Sites:
    """What the shared rule finding needs of a capture: its router sites."""

    sites: list[RouterSite]

    @property
    def layer_indices(self) -> list[int]:
        return [site.layer_index for site in self.sites]


def check_out_folder(out: Path | str, prefix: str = "doc") -> None:
    """``out`` must be new, empty, or a folder this routing wrote before (its runs and the
    hidden staging folders of interrupted writes): CaptureError saying what is there otherwise."""
    folder = Path(out)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CaptureError(f"--out {folder} is a file; route writes a folder of runs")
    if (folder / "manifest.json").exists():
        raise CaptureError(
            f"--out {folder} is a run bundle; route writes a folder of runs: give another folder"
        )
    pattern = re.compile(rf"^\.?{re.escape(prefix)}-\d{{6,}}(\.staging-.*)?$")
    strangers = sorted(entry.name for entry in folder.iterdir() if not pattern.match(entry.name))
    if strangers:
        entries = "1 entry" if len(strangers) == 1 else f"{len(strangers)} entries"
        raise CaptureError(
            f"--out {folder} holds {entries} that are not runs of a route (first: {strangers[0]!r}); "
            "give an empty folder or the folder of an earlier route"
        )


def text_fingerprint(text: str) -> str:
    """What a resumed route compares: the SHA-256 of the document's text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _same_document(target: Path, document: Document, settings: dict[str, Any]) -> str | None:
    """None when the bundle at ``target`` was routed from this document with these settings;
    else what differs (a rerun must continue the same corpus, never keep another one's runs)."""
    reader = RunReader(target)
    manifest = reader.manifest or {}
    routed = (manifest.get("capture_config") or {}).get("teacher_forced") or {}
    if not isinstance(routed, dict) or "text_sha256" not in routed:
        return "it was routed without a text fingerprint (an earlier version), so it cannot be matched"
    differs = []
    if routed.get("text_sha256") != text_fingerprint(document.text):
        differs.append("its text")
    if routed.get("source") != document.source:
        differs.append(f"its source ({routed.get('source')!r}, now {document.source!r})")
    for key, value in settings.items():
        if routed.get(key) != value:
            differs.append(f"{key} ({routed.get(key)!r}, now {value!r})")
    return None if not differs else "it differs in " + ", ".join(differs)


def document_run_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


def route_corpus(
    model: Any,
    tokenizer: Any,
    documents: Iterable[Document],
    *,
    out: Path | str,
    prefix: str = "doc",
    batch: int = 8,
    max_tokens_per_doc: int | None = None,
    store_dtype: str = "float32",
    model_id: str | None = None,
    tokenizer_id: str | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> RouteResult:
    """Route every position of ``documents`` and write one validated v0.2 bundle per document
    under ``out`` (``<prefix>-<index>``); documents whose bundle exists are skipped."""
    import torch

    if batch < 1:
        raise CaptureError("--batch must be at least 1")
    check_out_folder(out, prefix)
    sites = find_routers(model)
    result = RouteResult()
    name = model_id or str(
        getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    )
    tokenizer_name = tokenizer_id or getattr(tokenizer, "name_or_path", "") or name
    settings = {
        "model_id": name,
        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "store_dtype": store_dtype,
        "max_tokens_per_doc": max_tokens_per_doc,
    }
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    start = time.perf_counter()
    rules: dict[int, Any] | None = None  # found on the first document, reused while they hold
    was_training = model.training
    model.train(False)
    try:
        for chunk in _batches(documents, batch):
            todo: list[tuple[Document, list[int]]] = []
            for document in chunk:
                target = run_dir_for(out, document_run_id(prefix, document.index))
                if target.exists():
                    if not RunReader(target).validate().ok:
                        raise CaptureError(
                            f"{target} exists but is not a valid bundle; remove it to route again"
                        )
                    differs = _same_document(target, document, settings)
                    if differs is not None:
                        raise CaptureError(
                            f"{target} is not document {document.index} of this corpus routed this way: "
                            f"{differs}; route into another folder, or remove it"
                        )
                    result.skipped.append(target)
                    continue
                ids = [int(i) for i in tokenizer(document.text, add_special_tokens=True)["input_ids"]]
                if max_tokens_per_doc is not None:
                    ids = ids[:max_tokens_per_doc]
                if not ids:
                    result.empty.append(document.index)
                    continue
                todo.append((document, ids))
            if not todo:
                continue
            width = max(len(ids) for _doc, ids in todo)
            input_ids = torch.full((len(todo), width), pad, dtype=torch.long)
            mask = torch.zeros((len(todo), width), dtype=torch.long)
            for row, (_doc, ids) in enumerate(todo):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            logits, weights, selected = _route_batch(model, sites, input_ids.to(device), mask.to(device))
            for row, (document, ids) in enumerate(todo):
                n = len(ids)
                path, rules = _write_document(
                    model,
                    tokenizer,
                    sites,
                    document,
                    ids,
                    logits[row, :n],
                    None if weights is None else weights[row, :n],
                    selected[row, :n],
                    out=Path(out),
                    run_id=document_run_id(prefix, document.index),
                    model_id=name,
                    tokenizer_id=tokenizer_name,
                    store_dtype=store_dtype,
                    rules=rules,
                    settings=settings,
                )
                result.written.append(path)
                result.tokens += n
                if on_tokens is not None:
                    on_tokens(n)
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - start
    return result


def _batches(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for document in documents:
        chunk.append(document)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _route_batch(
    model: Any, sites: list[RouterSite], input_ids: Any, mask: Any, cache: Any = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One forward pass; per router site its logits, weights and selection as ``[B, S, L, ·]``
    arrays (one device-to-host copy). With ``cache`` (a transformers Cache holding the earlier
    positions of one sequence) the pass continues that sequence: chunked prefill."""
    import torch

    outputs: dict[int, Any] = {}
    handles = [
        site.module.register_forward_hook(
            lambda _m, _i, out, position=position: outputs.__setitem__(position, out)
        )
        for position, site in enumerate(sites)
    ]
    try:
        with torch.no_grad():
            if cache is None:
                model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            else:
                model(input_ids=input_ids, use_cache=True, **_cache_argument(model, cache))
    finally:
        for handle in handles:
            handle.remove()
    missing = [site.layer_index for position, site in enumerate(sites) if position not in outputs]
    if missing:
        raise CaptureError(f"the routers of layers {missing} did not run (a fused kernel may bypass them)")
    parts = [
        split_router_output(outputs[p], site.layer_index, getattr(site.module, "top_k", None))
        for p, site in enumerate(sites)
    ]
    b, s = input_ids.shape
    if any(part[0].shape[0] != b * s for part in parts):
        raise CaptureError("a router saw a different number of positions than the batch holds")
    has_weights = all(part[1] is not None for part in parts)
    with torch.no_grad():
        columns = [torch.stack([part[0] for part in parts], dim=1).float()]
        if has_weights:
            columns.append(torch.stack([part[1] for part in parts if part[1] is not None], dim=1).float())
        columns.append(torch.stack([part[2] for part in parts], dim=1).float())
        host = torch.cat(columns, dim=-1).cpu().numpy()
    experts, k = parts[0][0].shape[-1], parts[0][2].shape[-1]
    host = host.reshape(b, s, len(sites), -1)
    logits = host[..., :experts]
    weights = host[..., experts : experts + k] if has_weights else None
    selected = host[..., host.shape[-1] - k :].astype(np.int64)
    return logits, weights, selected


def _cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """The model's name for the KV cache argument (``cache`` in recent transformers, before it
    ``past_key_values``)."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    return {"cache": cache} if "cache" in parameters else {"past_key_values": cache}


def _write_document(
    model: Any,
    tokenizer: Any,
    sites: list[RouterSite],
    document: Document,
    ids: list[int],
    logits: np.ndarray,
    weights: np.ndarray | None,
    selected: np.ndarray,
    *,
    out: Path,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    store_dtype: str,
    rules: dict[int, Any] | None = None,
    first_position: int = 0,
    settings: dict[str, Any] | None = None,
) -> tuple[Path, dict[int, Any]]:
    """The document's bundle, and the rules it was written with. ``rules`` found on an earlier
    document are tried first: the validator proves them on every row of this one before it is
    written; if they do not hold, they are found again from this document (and its probes)."""
    from ..bundle.errors import RunBundleError

    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    tol = max(MODEL_TOLERANCE.get(dtype, 1e-5), DEFAULT_TOLERANCE[store_dtype])
    capture: Any = _Sites(sites)
    none = np.zeros((0, *logits.shape[1:]), dtype=logits.dtype)
    no_picks = np.zeros((0, *selected.shape[1:]), dtype=selected.dtype)
    no_weights = None if weights is None else np.zeros((0, *weights.shape[1:]), dtype=weights.dtype)

    def write(chosen: Any) -> Path:
        return _write_with(
            model,
            tokenizer,
            sites,
            document,
            ids,
            logits,
            weights,
            selected,
            chosen,
            capture,
            out=out,
            run_id=run_id,
            model_id=model_id,
            tokenizer_id=tokenizer_id,
            store_dtype=store_dtype,
            dtype=dtype,
            tol=tol,
            first_position=first_position,
            settings=settings,
        )

    if rules is not None:
        try:
            return write(rules), rules
        except RunBundleError as exc:
            if not {"selection_mismatch", "weight_mismatch"} & set(exc.counts):
                raise
    rules = _layer_rules(model, capture, logits, selected, weights, none, no_picks, no_weights, tol)
    return write(rules), rules


def _write_with(
    model: Any,
    tokenizer: Any,
    sites: list[RouterSite],
    document: Document,
    ids: list[int],
    logits: np.ndarray,
    weights: np.ndarray | None,
    selected: np.ndarray,
    rules: dict[int, Any],
    capture: Any,
    *,
    out: Path,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    store_dtype: str,
    dtype: str,
    tol: float,
    first_position: int = 0,
    settings: dict[str, Any] | None = None,
) -> Path:
    return _stream_document(
        model,
        tokenizer,
        sites,
        document,
        iter([(ids, logits, weights, selected)]),
        rules,
        capture,
        total=len(ids),
        out=out,
        run_id=run_id,
        model_id=model_id,
        tokenizer_id=tokenizer_id,
        store_dtype=store_dtype,
        dtype=dtype,
        tol=tol,
        first_position=first_position,
        settings=settings,
    )


def write_chunks(
    model: Any,
    tokenizer: Any,
    sites: list[RouterSite],
    document: Document,
    chunks: Iterator[Chunk],
    *,
    total: int,
    out: Path,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    store_dtype: str,
    first_position: int = 0,
) -> Path:
    """One long document's bundle from its chunks in order: the rules are found on the first
    chunk (and its probes) and proven on every row at close."""
    import itertools

    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    tol = max(MODEL_TOLERANCE.get(dtype, 1e-5), DEFAULT_TOLERANCE[store_dtype])
    capture: Any = _Sites(sites)
    first = next(chunks)
    _ids, logits, weights, selected = first
    none = np.zeros((0, *logits.shape[1:]), dtype=logits.dtype)
    no_picks = np.zeros((0, *selected.shape[1:]), dtype=selected.dtype)
    no_weights = None if weights is None else np.zeros((0, *weights.shape[1:]), dtype=weights.dtype)
    rules = _layer_rules(model, capture, logits, selected, weights, none, no_picks, no_weights, tol)
    return _stream_document(
        model,
        tokenizer,
        sites,
        document,
        itertools.chain([first], chunks),
        rules,
        capture,
        total=total,
        out=out,
        run_id=run_id,
        model_id=model_id,
        tokenizer_id=tokenizer_id,
        store_dtype=store_dtype,
        dtype=dtype,
        tol=tol,
        first_position=first_position,
    )


#: one chunk of a document: (token ids, logits, weights or None, selected), rows in order
Chunk = tuple[list[int], np.ndarray, np.ndarray | None, np.ndarray]


def _stream_document(
    model: Any,
    tokenizer: Any,
    sites: list[RouterSite],
    document: Document,
    chunks: Iterator[Chunk],
    rules: dict[int, Any],
    capture: Any,
    *,
    total: int,
    out: Path,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    store_dtype: str,
    dtype: str,
    tol: float,
    first_position: int = 0,
    settings: dict[str, Any] | None = None,
) -> Path:
    """The document's bundle, written chunk by chunk through one RunWriter (memory: one chunk).

    The manifest (groups, rules) is declared from the first chunk; the validator proves every
    rule on every row at close, so a later chunk the rules do not reproduce is refused whole."""
    ids, logits, weights, selected = next(chunks)
    none = np.zeros((0, *logits.shape[1:]), dtype=logits.dtype)
    no_picks = np.zeros((0, *selected.shape[1:]), dtype=selected.dtype)
    no_weights = None if weights is None else np.zeros((0, *weights.shape[1:]), dtype=weights.dtype)
    layers = [site.layer_index for site in sites]
    site_names = [site.site for site in sites]
    shared = _shared_experts(model)
    groups, routing, _prompt, biases = _groups(
        layers, site_names, rules, logits, selected, weights, none, no_picks, no_weights, shared,
        with_prompt=False,
    )  # fmt: skip
    router_class = type(sites[0].module).__name__
    manifest = build_manifest(
        run_id=run_id,
        model_id=model_id,
        tokenizer_id=tokenizer_id,
        prompt_text="",
        derivation_version=DERIVATION_VERSION,
        derivation_config_id=DERIVATION_CONFIG_ID,
        capture_config={
            **_capture_config(model, capture, dtype, router_class, rules),
            "teacher_forced": {
                "document_index": document.index,
                "source": document.source,
                "tokens": total,
                "text_sha256": text_fingerprint(document.text),
                **(settings or {}),
            },
        },
    )
    manifest.update(
        schema_version="manifest/v0.2.0",
        artifact_versions=dict(V02_ARTIFACT_VERSIONS),
        prompt={"text": ""},
        run_kind="teacher_forced",
        routing={"float_dtype": store_dtype, "tolerance": tol, "groups": groups},
    )
    experts_of: dict[int, int] = {}
    for slot, layer in enumerate(layers):
        experts_of[layer] = max(experts_of.get(layer, 0), rules[slot][1].shape[-1])
    layout = build_layer_grid_layout(
        run_id=run_id, layout_id="default-grid", layer_expert_counts=sorted(experts_of.items())
    )
    writer = RunWriter(out, manifest)
    try:
        done = 0
        while True:
            writer.add_tokens(_token_lines(tokenizer, document, run_id, ids, done, first_position), routing)
            done += len(ids)
            try:
                ids, logits, weights, selected = next(chunks)
            except StopIteration:
                break
            _declared, routing, _prompt, _biases = _groups(
                layers, site_names, rules, logits, selected, weights, none, no_picks, no_weights, shared,
                with_prompt=False,
            )  # fmt: skip
        return writer.close(layout, bias=biases or None)
    except BaseException:
        writer.abort()
        raise


def _token_lines(
    tokenizer: Any, document: Document, run_id: str, ids: list[int], done: int, first_position: int
) -> list[dict[str, Any]]:
    """The metadata lines of one chunk's tokens (``done`` tokens of the document came before)."""
    events = []
    for offset, token_id in enumerate(ids):
        t = done + offset
        event: dict[str, Any] = {
            "event_type": "token_complete",
            "schema_version": "raw/v0.2.0",
            "run_id": run_id,
            "token_index": t,
            "token_id": token_id,
            "token_text": tokenizer.decode([token_id]),
            "context_length": first_position + t + 1,  # position t routes the text up to token t
            "document_index": document.index,
        }
        if document.source is not None:
            event["source"] = document.source
        events.append(event)
    return events
