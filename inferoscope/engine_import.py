"""Routed experts returned by a serving engine (vLLM, SGLang), imported as a top-k-only v0.2 run.

Both engines return one row per *position* whose token was fed forward: rows for positions
``start .. P+G-2`` of the prompt (P tokens) and the generation (G tokens), each
``[layers, k]`` expert ids; the last generated token is never fed forward and has no row. The
layer axis is every decoder layer (dense layers read 0). Accepted inputs, one per generation of
the engines' formats:

- **SGLang** ``/generate`` response JSON: ``meta_info.routed_experts`` is base64 of the raw
  little-endian bytes (``tobytes``, no header), int32 unless ``meta_info.routed_experts_dtype``
  says ``uint16`` or ``uint8``; the prompt's ids as ``input_ids`` beside the response
  (``{"input_ids": [...], "response": {...}}``) or given separately; ``routed_experts_start_len``
  beside it when the request skipped prompt rows. The ``{"values", "valid_mask"}`` object variant
  is refused by name.
- **vLLM offline** (``LLM.generate``): ``CompletionOutput.routed_experts``, an int32 ndarray,
  saved by the user as JSON or NPZ with ``prompt_token_ids`` and ``token_ids``::

      out = llm.generate(prompts, params)[0]
      json.dump({"prompt_token_ids": out.prompt_token_ids,
                 "token_ids": list(out.outputs[0].token_ids),
                 "routed_experts": out.outputs[0].routed_experts.tolist()}, open("run.json", "w"))

- **vLLM HTTP** (OpenAI-compatible, non-streaming, ``return_token_ids: true``): the response
  JSON as returned: top-level ``prompt_token_ids``, ``choices[N].token_ids`` and
  ``choices[N].routed_experts``, either nested lists (with top-level ``prompt_routed_experts``
  holding the prompt rows apart, vLLM 0.21) or base64 of ``.npy`` bytes (uint8 for up to 256
  experts, uint16 above, int32). ``routed_experts_prompt_start`` (the request's sampling
  parameter) beside it when prompt rows were skipped.

Everything the file says is checked against the model's config and reported, never guessed:
the row count against P+G-1, which layers the axis holds (and a layer axis that looks shifted
against the model's dense layers), k, expert ids out of range (padding, a -1 sentinel), repeated
ids in a row, and rows all zero in every MoE layer (slots the engine never wrote: vLLM zero-fills
its buffer, so a MoE kernel that bypassed the capture returns zeros).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np


class EngineImportError(ValueError):
    """The engine file cannot be imported as asked (one line saying why)."""


@dataclass(slots=True)
class EngineTrace:
    engine: str
    token_ids: list[int]  # prompt then generated
    prompt_tokens: int
    start: int  # the position of the first row
    experts: np.ndarray  # [rows, layers on the engine's axis, k]
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ModelLayers:
    """What the model says its routing looks like (from its config, no weights loaded)."""

    decoder_layers: int
    moe_layers: list[int]
    experts: int
    top_k: int


def _decode_b64(text: str, dtype: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise EngineImportError("routed_experts is not valid base64") from None
    if raw[:6] == b"\x93NUMPY":
        loaded: np.ndarray = np.load(io.BytesIO(raw), allow_pickle=False)
        return loaded
    try:
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    except (TypeError, ValueError):
        raise EngineImportError(f"unknown routed_experts dtype {dtype!r}") from None


def read_sglang(path: Path, prompt_ids: list[int] | None, layers_axis: int, top_k: int) -> EngineTrace:
    obj = _load_json(path)
    response = obj.get("response", obj) if isinstance(obj, dict) else None
    if not isinstance(response, dict) or not isinstance(response.get("meta_info"), dict):
        raise EngineImportError(f"{path}: not an SGLang /generate response (no meta_info)")
    meta = response["meta_info"]
    encoded = meta.get("routed_experts")
    if isinstance(encoded, dict):
        raise EngineImportError(
            f"{path}: meta_info.routed_experts is an object (values and valid_mask), a variant this "
            "importer does not read; the base64 string SGLang's /generate returns is needed"
        )
    if not isinstance(encoded, str):
        raise EngineImportError(
            f"{path}: meta_info has no routed_experts (start the server with --enable-return-routed-experts "
            "and send return_routed_experts: true)"
        )
    ids = prompt_ids if prompt_ids is not None else obj.get("input_ids")
    output = response.get("output_ids")
    if not _int_list(ids):
        raise EngineImportError(
            f"{path}: the prompt's token ids are needed (input_ids beside the response, or --prompt-ids)"
        )
    if not _int_list(output):
        raise EngineImportError(f"{path}: the response has no output_ids")
    flat = _decode_b64(encoded, str(meta.get("routed_experts_dtype", "int32")))
    width = layers_axis * top_k
    if flat.size % width:
        raise EngineImportError(
            f"{path}: {flat.size} expert ids do not split into rows of {layers_axis} layers x {top_k}"
        )
    start = int(obj.get("routed_experts_start_len", 0)) if isinstance(obj, dict) else 0
    return EngineTrace(
        "sglang", [*ids, *output], len(ids), start, flat.reshape(-1, layers_axis, top_k).astype(np.int64)
    )


def read_vllm(path: Path, prompt_ids: list[int] | None, choice: int = 0) -> EngineTrace:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            obj: dict[str, Any] = {key: data[key] for key in data.files}
        obj = {k: (v.tolist() if k.endswith("token_ids") else v) for k, v in obj.items()}
    else:
        obj = _load_json(path)
        if not isinstance(obj, dict):
            raise EngineImportError(f"{path}: not a JSON object")
    if "meta_info" in obj or "response" in obj:
        raise EngineImportError(f"{path}: this looks like an SGLang response; use --format sglang")
    notes: list[str] = []
    prompt = prompt_ids if prompt_ids is not None else obj.get("prompt_token_ids")
    source: dict[str, Any] = obj
    if isinstance(obj.get("choices"), list):  # the OpenAI-compatible HTTP response
        choices = obj["choices"]
        if not 0 <= choice < len(choices) or not isinstance(choices[choice], dict):
            raise EngineImportError(f"{path}: the response has {len(choices)} choice(s); no choice {choice}")
        source = choices[choice]
        if len(choices) > 1:
            notes.append(f"choice {choice} of {len(choices)} imported")
        if source.get("routed_experts") is None:
            raise EngineImportError(
                f"{path}: choice {choice} has no routed_experts (vLLM returns them only on non-streaming "
                "responses, with --enable-return-routed-experts, for a request that ran a forward pass)"
            )
    output = source.get("token_ids")
    if not _int_list(prompt) or not _int_list(output):
        raise EngineImportError(
            f"{path}: prompt_token_ids and token_ids (lists of ids) are needed "
            "(the HTTP API returns them with return_token_ids: true)"
        )
    experts = _array(source.get("routed_experts"), path)
    prompt_rows = obj.get("prompt_routed_experts")
    if prompt_rows is not None:  # vLLM 0.21: prompt and completion rows apart
        experts = np.concatenate([_array(prompt_rows, path), experts])
        notes.append("prompt_routed_experts and routed_experts joined (vLLM 0.21 layout)")
    start_value = obj.get("routed_experts_prompt_start", obj.get("routed_experts_start", 0))
    if isinstance(start_value, np.ndarray):
        start_value = start_value.tolist()
    if not isinstance(start_value, int) or isinstance(start_value, bool) or start_value < 0:
        raise EngineImportError(f"{path}: routed_experts_prompt_start must be a count of prompt rows >= 0")
    start = start_value
    return EngineTrace("vllm", [*prompt, *output], len(prompt), start, experts, notes)


def _array(value: Any, path: Path) -> np.ndarray:
    if isinstance(value, str):
        array = _decode_b64(value, "int32")
    elif isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, list):
        try:
            array = np.asarray(value)
        except ValueError:
            raise EngineImportError(f"{path}: routed_experts rows have different shapes") from None
    else:
        raise EngineImportError(
            f"{path}: routed_experts is missing (start vLLM with --enable-return-routed-experts)"
        )
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise EngineImportError(
            f"{path}: routed_experts must be integer [rows, layers, k], got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


def _int_list(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineImportError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineImportError(f"{path}: not JSON ({exc})") from None


@dataclass(slots=True)
class Checked:
    """The rows mapped to the model's MoE layers, and every finding about them."""

    selected: np.ndarray  # [rows, moe layers, k]
    findings: list[str]
    problems: list[str]  # findings that make the import wrong, not just notable


def check_trace(trace: EngineTrace, model: ModelLayers) -> Checked:
    rows, axis, k = trace.experts.shape
    findings: list[str] = list(trace.notes)
    problems: list[str] = []
    expected_rows = len(trace.token_ids) - 1 - trace.start
    if rows != expected_rows:
        problems.append(
            f"{rows} rows for {len(trace.token_ids)} tokens from position {trace.start}: expected "
            f"{expected_rows} (one per fed-forward position; the last generated token has none): "
            f"{'missing' if rows < expected_rows else 'extra'} rows"
        )
    if k != model.top_k:
        problems.append(f"k is {k} in the file but the model selects {model.top_k} experts")
    if axis == model.decoder_layers:
        dense = [i for i in range(axis) if i not in model.moe_layers]
        zero_columns = [i for i in range(axis) if not trace.experts[:, i].any()]
        if dense:
            findings.append(
                f"the layer axis holds all {axis} decoder layers; dense layers {dense} are dropped"
            )
        shift = _layer_shift(zero_columns, dense, axis)
        if shift:
            problems.append(
                f"layer index offset: the all-zero (dense) columns {zero_columns} match the model's dense "
                f"layers {dense} shifted by {shift}; the engine's layer axis is off by {shift}"
            )
        selected = trace.experts[:, model.moe_layers]
    elif axis == len(model.moe_layers):
        findings.append(f"the layer axis holds the {axis} MoE layers only (as some builds write it)")
        selected = trace.experts
    else:
        raise EngineImportError(
            f"the file's layer axis has {axis} entries; the model has {model.decoder_layers} decoder layers, "
            f"{len(model.moe_layers)} of them MoE"
        )
    unwritten = np.asarray(~selected.any(axis=(1, 2)) if k > 1 else np.zeros(rows, dtype=bool))
    if unwritten.any():
        where = np.flatnonzero(unwritten)
        problems.append(
            f"{int(unwritten.sum())} rows (first at position {trace.start + int(where[0])}) are all zeros in "
            "every MoE layer: slots the engine never wrote (vLLM zero-fills its buffer; a MoE kernel that "
            "bypassed the capture returns all zeros, and so do prompt rows on a decode replica)"
        )
    out_of_range = (selected < 0) | (selected >= model.experts)
    if out_of_range.any():
        values = sorted({int(v) for v in selected[out_of_range]})[:5]
        sentinel = " (-1: a missing-route sentinel)" if -1 in values else ""
        problems.append(
            f"{int(out_of_range.sum())} expert ids outside [0, {model.experts}) (padding values {values}"
            f"{sentinel}) in {int(out_of_range.any(axis=(1, 2)).sum())} rows"
        )
    ordered = np.sort(selected, axis=-1)
    repeats = (np.diff(ordered, axis=-1) == 0).any(axis=-1) & ~unwritten[:, None]
    if repeats.any():
        problems.append(
            f"{int(repeats.sum())} (row, layer) pairs repeat an expert id (a padded or dropped row)"
        )
    return Checked(selected, findings, problems)


def _layer_shift(zero_columns: list[int], dense: list[int], axis: int) -> int:
    """The offset that best maps the model's dense layers onto the file's all-zero columns (0: none)."""
    if not dense or sorted(zero_columns) == sorted(dense):
        return 0
    for shift in (1, -1, 2, -2):
        moved = sorted(i + shift for i in dense if 0 <= i + shift < axis)
        if moved and moved == sorted(zero_columns):
            return shift
    return 0
