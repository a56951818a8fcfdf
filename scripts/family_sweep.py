"""Which MoE families of the installed transformers can inferoscope capture faithfully?

For every ``*ForCausalLM`` whose modeling module defines a router, build a tiny random model
from the family's config class, give it trained-like routing (router logits spread out,
selection biases non-zero), save it and load it back with ``AutoModelForCausalLM.from_pretrained``
(float32, CPU), capture a short greedy generation with ``capture_run(contract="v0.2")`` and check
the bundle against the routers' own outputs, observed by independent forward hooks.

Status per family: ``captured`` (valid bundle, every token's selected experts and mixing weights
equal the router's), ``refused`` (``capture_run`` raised ``CaptureError``), ``mismatch`` (a bundle
was written but a check failed) or ``error`` (the tiny model could not be built, loaded or run).
Prints one line per family, then a markdown table and a summary line.

    .venv/bin/python scripts/family_sweep.py [--families olmoe mixtral ...] [--variants]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.capture.tiny_models

PROMPT = "the quick brown fox"
LAYERS = 4
ROUTER_SCALE = 20.0  # random init routes almost uniformly; trained routers are far more decisive
BIAS_STD = 0.5
TIME_LIMIT_S = 60
STATUSES = ("captured", "refused", "mismatch", "error")

#: set on every family whose config has the field with a non-None default (FORCED: any default)
GENERIC: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "shared_intermediate_size": 32,
    "shared_experts_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32,
    "dense_intermediate_size": 64,
    "intermediate_size_mlp": 64,
    "ffn_hidden_size": 64,
    "expert_ffn_hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "num_experts": 8,
    "num_local_experts": 8,
    "n_routed_experts": 8,
    "moe_num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "moe_k": 2,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "moe_num_shared_experts": 1,
    "n_group": 2,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "num_dense_layers": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "index_head_dim": 16,
    "index_n_heads": 2,
    "index_topk": 8,
    "num_mtp_layers": 0,
    "num_nextn_predict_layers": 0,
    "sliding_window": 16,
    "sliding_window_size": 16,
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 2,
    "swa_head_dim": 16,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_conv_kernel_dim": 4,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "pretraining_tp": 1,
    "tie_word_embeddings": False,
    "use_cache": True,
}
FORCED = {
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "head_dim",
    "num_mtp_layers",
    "num_nextn_predict_layers",
    "mlp_only_layers",
    "tie_word_embeddings",
}

#: per family (model_type), applied last; may name keywords that only ``__post_init__`` reads
OVERRIDES: dict[str, dict[str, Any]] = {
    "dbrx": {
        "d_model": 64,
        "n_heads": 4,
        "n_layers": LAYERS,
        "max_seq_len": 256,
        # DbrxAttention reads rope_theta and clamps with clip_qkv without a None guard
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 8, "moe_top_k": 2},
    },
    "doge": {"is_moe": True, "num_experts": 16, "keep_window_size": 64},  # a square number of experts
    "dots3_note_text": {  # the sliding-window layers' MLA shapes
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 4,
        "swa_q_lora_rank": 32,
        "swa_kv_lora_rank": 16,
        "swa_head_dim": 16,
        "swa_qk_nope_head_dim": 8,
        "swa_v_head_dim": 16,
    },
    "gemma4_text": {
        "enable_moe_block": True,
        "num_experts": 8,
        "top_k_experts": 2,
        "moe_intermediate_size": 32,
    },
    "granitemoehybrid": {  # default: Mamba layers only
        "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"],
        "mamba_n_heads": 8,
    },
    "jamba": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
    },
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv", "full_attention"]},
    "longcat_flash": {"num_layers": 2, "zero_expert_num": 4},  # two sublayers per layer
    "qwen4_exp_text": {
        "indexer_n_heads": 2,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 16,
        "indexer_budget": 8,
        "indexer_compress_ratio": 2,
        "hc_lowrank": 16,
    },
    "zaya": {"num_experts_per_tok": 1},  # the family supports top-1 only
}

#: ``--variants``: extra rows, a family with config switches that change its routing rule
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "deepseek_v2[group_limited_greedy]": (
        "deepseek_v2",
        {"topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 1, "routed_scaling_factor": 2.5},
    ),
    "qwen3_moe[norm_topk_prob]": ("qwen3_moe", {"norm_topk_prob": True}),
    "lfm2_moe[no expert bias]": ("lfm2_moe", {"use_expert_bias": False}),
}


@dataclass
class Result:
    """One family's outcome."""

    family: str
    status: str  # one of STATUSES
    detail: str  # the mixing rule, or why not captured
    seconds: float = 0.0


@dataclass
class HookLog:
    """Every router call seen by the sweep's own hooks, tagged with its forward pass."""

    passes: int = 0
    #: router module name -> (forward pass, last-row indices, last-row weights or None) per call
    calls: dict[str, list[tuple[int, np.ndarray | None, np.ndarray | None]]] = field(default_factory=dict)


class FamilyTimeout(Exception):
    """A family ran past its time limit."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise FamilyTimeout in the main thread after ``seconds`` (SIGALRM)."""

    def expire(_signum: int, _frame: Any) -> None:
        raise FamilyTimeout(f"timed out after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- families


def _defines_router(module: Any) -> bool:
    """A class of ``module`` records ``router_logits``, or is named like a MoE router next to
    a class of experts."""
    classes = [o for o in vars(module).values() if inspect.isclass(o) and o.__module__ == module.__name__]
    for cls in classes:
        recorders = getattr(cls, "_can_record_outputs", None)
        if isinstance(recorders, dict) and "router_logits" in recorders:
            return True
    names = [cls.__name__ for cls in classes]
    has_experts = any(n.endswith(("Experts", "SparseMoeBlock", "MoE", "Moe")) for n in names)
    return any(n.endswith(("TopKRouter", "TopkRouter")) for n in names) or (
        has_experts and any(n.endswith(("Router", "Gate", "Gating")) for n in names)
    )


def moe_families() -> dict[str, type]:
    """model_type -> its ``*ForCausalLM`` class, for every family whose modeling defines a router.

    Where a composite config (text + vision) and its text config share a causal LM class
    (``llama4`` and ``llama4_text``), the text config's model type is kept."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from inferoscope.capture.loading import causal_lm_class

    found: dict[str, type] = {}
    names = dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    for model_type, config_cls in CONFIG_MAPPING.items():  # families shipped but not mapped (Mistral4)
        if model_type not in names:
            cls = getattr(transformers, config_cls.__name__.removesuffix("Config") + "ForCausalLM", None)
            if cls is not None and causal_lm_class(config_cls()) is cls:
                names[model_type] = cls.__name__
    for model_type, class_name in names.items():
        if not class_name.endswith("ForCausalLM"):
            continue
        try:
            cls = getattr(transformers, class_name)
            module = importlib.import_module(cls.__module__)
        except Exception:  # a class whose optional dependencies are missing
            continue
        if _defines_router(module):
            found[model_type] = cls
    kept: dict[str, type] = {}
    for model_type, cls in found.items():
        config_cls, own = CONFIG_MAPPING[model_type], getattr(cls, "config_class", None)
        inner = getattr(config_cls, "sub_configs", None) or {}
        if config_cls is not own and own in inner.values():
            continue
        kept[model_type] = cls
    return dict(sorted(kept.items()))


# ----------------------------------------------------------------------------- tiny models

_PER_LAYER = object()  # a field that is set per layer (it has a value, but no global one)


def _field_names(config_cls: type, default: Any) -> set[str]:
    if dataclasses.is_dataclass(config_cls):
        return {f.name for f in dataclasses.fields(config_cls)}
    return set(default.to_dict())


def _default_value(default: Any, name: str) -> Any:
    try:
        return getattr(default, name, None)
    except Exception:  # a per-layer (heterogeneous) attribute refuses a global read
        return _PER_LAYER


def _resize_layer_list(values: list[Any], n: int) -> list[Any]:
    """``n`` entries of a per-layer list, in layer order: the first layer of each distinct value,
    then the last layers (the repeating pattern, past any leading dense layers)."""
    picks: list[int] = []
    seen: list[Any] = []
    for i, value in enumerate(values):
        if value not in seen:
            seen.append(value)
            picks.append(i)
    for i in reversed(range(len(values))):
        if len(picks) >= n:
            break
        if i not in picks:
            picks.append(i)
    return [values[i] for i in sorted(picks[:n])]


def tiny_config(model_type: str, vocab_size: int, extra: dict[str, Any] | None = None) -> Any:
    """The family's config class, shrunk to a tiny model (about 8 experts, top-2)."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    config_cls = type(default)
    names = _field_names(config_cls, default)
    old_layers = _default_value(default, "num_hidden_layers")
    kwargs: dict[str, Any] = {}
    for name, value in GENERIC.items():
        if name in FORCED or _default_value(default, name) is not None:
            kwargs[name] = value
    for name in names:  # per-layer lists keep their pattern, at the new depth
        value = _default_value(default, name)
        if isinstance(value, list) and isinstance(old_layers, int) and len(value) == old_layers > LAYERS:
            kwargs[name] = _resize_layer_list(value, LAYERS)
    if "kv_lora_rank" in names:  # multi-head latent attention: a key/value head per query head
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", GENERIC["num_attention_heads"])
        kwargs["head_dim"] = GENERIC["qk_rope_head_dim"]  # where MLA has a head_dim, it is the rotary part
    if "unpadded_vocab_size" in names:
        kwargs["unpadded_vocab_size"] = vocab_size
    kwargs.update(
        vocab_size=vocab_size, num_hidden_layers=LAYERS, eos_token_id=0, pad_token_id=0, bos_token_id=None
    )
    kwargs = {name: value for name, value in kwargs.items() if name in names}
    kwargs.update(OVERRIDES.get(model_type, {}))
    kwargs.update(extra or {})
    return config_cls(**kwargs)


def _declared_router_classes(model: Any) -> tuple[type, ...]:
    """Router classes declared by any module class of ``model`` (``_can_record_outputs``)."""
    classes: list[type] = []
    for module in model.modules():
        recorders = getattr(type(module), "_can_record_outputs", None)
        spec = recorders.get("router_logits") if isinstance(recorders, dict) else None
        for item in spec if isinstance(spec, (list, tuple)) else [spec]:
            target = getattr(item, "target_class", None) or (item if isinstance(item, type) else None)
            if isinstance(target, type) and target not in classes:
                classes.append(target)
    return tuple(classes)


def router_modules(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every router, found without inferoscope's checks (which refuse some
    models before their routing could be made trained-like or observed)."""
    classes = _declared_router_classes(model)

    def is_router(module: Any) -> bool:
        name = type(module).__name__
        if name.endswith("HashRouter") or hasattr(module, "tid2eid"):  # undeclared: DeepSeek-V4's hash layers
            return True
        if classes:
            return isinstance(module, classes)
        return name.endswith(("TopKRouter", "TopkRouter"))

    return [(name, module) for name, module in model.named_modules() if is_router(module)]


def _expert_counts(router: Any) -> set[int]:
    """Plausible expert counts of a router: its count attributes and its 2-D weights' rows."""
    counts = {
        getattr(router, name, None) for name in ("num_experts", "n_routed_experts", "num_local_experts")
    }
    counts |= {int(p.shape[0]) for p in router.parameters() if p.dim() == 2}
    return {c for c in counts if isinstance(c, int) and c > 1}


def selection_biases(model: Any) -> list[tuple[str, Any]]:
    """Per-expert parameters or buffers named like a bias (``[E]`` or ``[1, E]``), anywhere in a
    router or directly on its MoE block (the router's parent)."""
    modules = dict(model.named_modules())
    found: dict[str, Any] = {}
    for name, router in router_modules(model):
        experts = _expert_counts(router)
        parent_name = name.rsplit(".", 1)[0]
        for owner_name, owner, recurse in (
            (name, router, True),
            (parent_name, modules.get(parent_name), False),
        ):
            if owner is None or owner is model:
                continue
            for tensor_name, tensor in [
                *owner.named_parameters(recurse=recurse),
                *owner.named_buffers(recurse=recurse),
            ]:
                per_expert = tensor.numel() in experts and tensor.numel() == max(tensor.shape, default=0)
                if per_expert and tensor.is_floating_point() and "bias" in tensor_name.rsplit(".", 1)[-1]:
                    found[f"{owner_name}.{tensor_name}"] = tensor
    return list(found.items())


def spread_routers(model: Any, seed: int) -> None:
    """Multiply every router's 2-D weights by ROUTER_SCALE (drawing zero-initialised ones first)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, router in router_modules(model):
            for param_name, param in router.named_parameters():
                if param.dim() == 2 and param_name.endswith("weight"):
                    if not param.any():
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
                    param.mul_(ROUTER_SCALE)


def randomize_biases(model: Any, seed: int) -> list[str]:
    """Give every selection bias non-zero random values; returns their names."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for name, tensor in selection_biases(model):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * BIAS_STD)
            names.append(name)
        for name, table in model.named_buffers():  # hash routing: a token -> distinct experts table
            if name.endswith("tid2eid") and table.dim() == 2:
                experts = int(getattr(model.config, "num_local_experts", 0) or table.max() + 1 or 2)
                rows = [
                    torch.randperm(experts, generator=generator)[: table.shape[1]]
                    for _ in range(table.shape[0])
                ]
                table.copy_(torch.stack(rows).to(table.dtype))
                names.append(name)
    return names


def build_and_load(model_type: str, folder: Path, extra: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """A tiny trained-like model of ``model_type`` and its tokenizer, saved to ``folder`` and loaded
    back with ``from_pretrained`` (float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.capture.tiny_models import tokenizer_files

    tokenizer_files(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(0)
    config = tiny_config(model_type, len(tokenizer), extra)
    from inferoscope.capture.loading import causal_lm_class, load_causal_lm

    cls = causal_lm_class(config)
    model = (
        cls._from_config(config, dtype=torch.float32)
        if cls is not None
        else AutoModelForCausalLM.from_config(config)
    )
    spread_routers(model, seed=0)
    randomize_biases(model, seed=1)
    model.save_pretrained(folder)
    del model
    loaded = load_causal_lm(folder, dtype=torch.float32)  # the loader `inferoscope capture` uses
    if any(not tensor.any() for _name, tensor in selection_biases(loaded)):
        randomize_biases(loaded, seed=1)  # a non-persistent buffer is not saved: set it again
    loaded.eval()  # type: ignore[no-untyped-call]
    return loaded, tokenizer


# ----------------------------------------------------------------------------- checking


def _last_row(output: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(indices, weights) of a router call's last row: its integer tensor, and the float
    tensor of the same shape (None where there is none)."""
    import torch

    items = output if isinstance(output, (tuple, list)) else (output,)
    if len(items) == 5 and isinstance(items[3], (list, tuple)) and isinstance(items[4], torch.Tensor):
        # JetMoE: (positions in the flattened top-k, tokens, gates, count per expert, logits), by expert
        positions, _tokens, gates, sizes, logits = items
        k = positions.numel() // logits.shape[0]
        order = np.repeat(np.arange(logits.shape[-1]), np.asarray(sizes))
        flat = np.zeros(positions.numel(), dtype=np.int64)
        flat[positions.cpu().numpy()] = order
        flat_gates = np.zeros(positions.numel())
        flat_gates[positions.cpu().numpy()] = gates.detach().float().cpu().numpy()
        return flat.reshape(-1, k)[-1], flat_gates.reshape(-1, k)[-1]
    tensors = [t for t in items if isinstance(t, torch.Tensor)]
    integer = [t for t in tensors if not t.is_floating_point()]
    if not integer:  # Llama-4: a score matrix that is zero outside the chosen experts
        wide = [t for t in tensors if t.is_floating_point() and t.dim() == 2]
        scattered = [t for t in wide if bool((t == 0).any())]
        if not scattered:
            return None, None
        row = scattered[0][-1].detach().float().cpu().numpy()
        chosen = np.flatnonzero(row)
        order = chosen[np.argsort(-row[chosen], kind="stable")]
        return order.astype(np.int64), row[order]
    indices = integer[0]
    last = indices.reshape(-1, indices.shape[-1])[-1].detach().cpu().numpy().astype(np.int64)
    same = [t for t in tensors if t.is_floating_point() and tuple(t.shape) == tuple(indices.shape)]
    if not same:
        return last, None
    return last, same[0].reshape(-1, same[0].shape[-1])[-1].detach().float().cpu().numpy()


@contextmanager
def observe_routers(model: Any) -> Iterator[HookLog]:
    """Record every router call's last-row indices and weights, and count forward passes."""
    log = HookLog()
    handles = []

    def on_pass(_module: Any, _args: Any) -> None:
        log.passes += 1

    def router_hook(name: str) -> Any:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            indices, weights = _last_row(output)
            log.calls.setdefault(name, []).append((log.passes - 1, indices, weights))

        return keep

    def experts_hook(name: str) -> Any:
        """For a router that returns logits only (DBRX): what the experts were called with."""

        def keep(_module: Any, args: Any, kwargs: Any) -> None:
            calls = log.calls.get(name)
            if not calls or calls[-1][1] is not None:
                return
            import torch

            given = [*args, *kwargs.values()]
            index = next(
                (t for t in given if isinstance(t, torch.Tensor) and not t.is_floating_point()), None
            )
            if index is None:
                return
            weight = next(
                (
                    t
                    for t in given
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.shape == index.shape
                ),
                None,
            )
            last = index.reshape(-1, index.shape[-1])[-1].detach().cpu().numpy().astype(np.int64)
            weights = (
                None
                if weight is None
                else weight.reshape(-1, weight.shape[-1])[-1].detach().float().cpu().numpy()
            )
            calls[-1] = (calls[-1][0], last, weights)

        return keep

    modules = dict(model.named_modules())
    try:
        handles.append(model.register_forward_pre_hook(on_pass))
        for name, module in router_modules(model):
            handles.append(module.register_forward_hook(router_hook(name)))
            experts = modules.get(name.rsplit(".", 1)[0] + ".experts")
            if experts is not None:
                handles.append(experts.register_forward_pre_hook(experts_hook(name), with_kwargs=True))
        yield log
    finally:
        for handle in handles:
            handle.remove()


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values).ravel()]


def check_bundle(
    path: Path, log: HookLog, sites: dict[tuple[int, str], str], tokens: int, reference: list[int]
) -> list[str]:
    """Every way the bundle differs from what the routers returned (empty: faithful).

    ``sites`` maps each recorded (layer, site) to its router module. Event ``t`` is checked against the
    router's call in forward pass ``t`` (pass 0 is the prompt's, which produced token 0), and its
    token against ``reference``, a plain ``generate`` without capture."""
    from inferoscope import RunReader

    problems: list[str] = []
    reader = RunReader(path)
    report = reader.validate()
    if not report.ok:
        problems.append("invalid bundle: " + "; ".join(issue.describe() for issue in report.issues[:2]))
    count = len(reader)
    if count != tokens:
        problems.append(f"{count} events for {tokens} tokens")
    by_pass: dict[str, dict[int, tuple[np.ndarray | None, np.ndarray | None]]] = {}
    for name, calls in log.calls.items():
        most = int(np.bincount([p for p, _, _ in calls]).max(initial=0))
        if most > 1:
            problems.append(f"router {name} ran {most} times in one forward pass")
        by_pass[name] = {p: (indices, weights) for p, indices, weights in calls}
    unrecorded = sorted(set(log.calls) - set(sites.values()))
    if unrecorded:
        problems.append(f"routers missing from the bundle: {unrecorded}")
    for t in range(count):
        event = reader.token_event(t)
        if t < len(reference) and event.token_id != reference[t]:
            problems.append(f"token {t} is {event.token_id}; generate without capture gave {reference[t]}")
        for layer in event.layers:
            where = f"token {t}, layer {layer.layer_index}"
            site = sites.get((-1 if layer.layer_index is None else layer.layer_index, layer.site))
            if site is None or t not in by_pass.get(site, {}):
                return [*problems, f"{where}: no router call in forward pass {t}"]
            indices, weights = by_pass[site][t]
            if indices is None or [int(i) for i in indices] != list(layer.selected):
                shown = None if indices is None else indices.tolist()
                return [*problems, f"{where}: selected {list(layer.selected)}, the router returned {shown}"]
            if weights is None and layer.weights is None:
                continue
            if weights is None or layer.weights is None:
                return [
                    *problems,
                    f"{where}: weights recorded {layer.weights is not None}, "
                    f"returned by the router {weights is not None}",
                ]
            if not np.allclose(np.asarray(layer.weights, dtype=np.float64), weights, atol=1e-6, rtol=0):
                return [
                    *problems,
                    f"{where}: weights {_rounded(layer.weights)}, the router returned {_rounded(weights)}",
                ]
    return problems


PROBE_ROWS = 2000


def probe_rules(model: Any, path: Path) -> tuple[list[str], int]:
    """Feed random positions straight into every router that takes hidden states alone and check
    that the bundle's declared rule reproduces the router's own selection (and weights, unless
    declared unchecked) on all of them: a rule that fits a short capture by luck fails here.
    Returns the problems and how many routers were probed."""
    import inspect as pyinspect

    import torch

    from inferoscope import RunReader
    from inferoscope.capture import find_routers
    from inferoscope.capture.rules import score_rows
    from inferoscope.routing import expected_weights, selection_keys, selection_violations

    reader = RunReader(path)
    routing = reader.routing
    if routing is None:
        return ["no routing declared"], 0
    sidecar = reader.sidecar()
    generator = torch.Generator().manual_seed(5)
    problems: list[str] = []
    probed = 0
    for site in find_routers(model):
        group = routing.group_of(site.layer_index, site.site)
        if group is None or group.selection.rule not in ("topk", "group_limited_topk"):
            continue
        if len(pyinspect.signature(site.module.forward).parameters) != 1:
            continue  # the router takes more than hidden states (a bias passed in, token ids)
        hidden = int(getattr(model.config, "hidden_size", 0))
        x = torch.randn(PROBE_ROWS, hidden, generator=generator)
        with torch.no_grad():
            output = site.module(x)
        logits, weights, indices = _probe_parts(output)
        if logits is None or indices is None:
            continue
        probed += 1
        scores = score_rows(logits, group.score_function)
        bias = None
        if group.selection.bias:
            bias_rows = sidecar.whole(group, "bias")
            bias = None if bias_rows is None else bias_rows[group.layers.index(site.layer_index)]
        keys = selection_keys(scores, bias)
        bad, _ = selection_violations(keys, indices, group.selection, 1e-5)
        if bad.any():
            missed = int(bad.sum())
            problems.append(
                f"layer {site.layer_index}: the declared selection misses {missed} of {PROBE_ROWS} probes"
            )
            continue
        expected = expected_weights(np.take_along_axis(scores, indices, 1), group.mixing)
        if (
            weights is not None
            and expected is not None
            and not np.allclose(weights, expected, atol=1e-4, rtol=1e-4)
        ):
            problems.append(f"layer {site.layer_index}: the declared mixing rule misses the probes' weights")
    return problems, probed


def _probe_parts(output: Any) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    import torch

    tensors = [
        t for t in (output if isinstance(output, (tuple, list)) else (output,)) if isinstance(t, torch.Tensor)
    ]
    integer = [t for t in tensors if not t.is_floating_point() and t.dim() == 2]
    floating = [t for t in tensors if t.is_floating_point() and t.dim() == 2]
    if not integer or not floating:
        return None, None, None
    indices = integer[0]
    rows = [t for t in floating if t.shape[0] == indices.shape[0]]
    if not rows:
        return None, None, None
    logits = max(rows, key=lambda t: t.shape[-1])
    narrow = [t for t in rows if t is not logits and t.shape == indices.shape]
    weights = narrow[0].double().numpy() if narrow else None
    return logits.double().numpy(), weights, indices.numpy().astype(np.int64)


def _mixing(path: Path) -> str:
    from inferoscope import RunReader

    routing = RunReader(path).routing
    if routing is None or not routing.groups:
        return "no routing declared"
    mixing = routing.groups[0].mixing
    text = mixing.rule + (f" x{mixing.scale:g}" if mixing.scale != 1.0 else "")
    return text + (f" ({mixing.name})" if mixing.name else "")


def _short(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def sweep_one(
    label: str, model_type: str, work: Path, tokens: int, extra: dict[str, Any] | None = None
) -> Result:
    """Build, load, capture and check one family (``extra``: config fields of a variant)."""
    import torch

    from inferoscope.capture import CaptureError, capture_run, find_routers

    folder = work / label.replace("[", "_").replace("]", "").replace(" ", "_")
    try:
        model, tokenizer = build_and_load(model_type, folder / "checkpoint", extra)
        inputs = tokenizer(PROMPT, return_tensors="pt")
        with torch.no_grad():
            plain = model.generate(
                **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0
            )
        reference = plain[0, inputs["input_ids"].shape[1] :].tolist()
    except FamilyTimeout:
        raise
    except Exception as exc:
        return Result(label, "error", f"{type(exc).__name__}: {_short(str(exc))}")
    try:
        with observe_routers(model) as log:
            path = capture_run(
                model,
                tokenizer,
                PROMPT,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                out=folder / "runs",
                run_id="run",
                contract="v0.2",
            )
    except CaptureError as exc:
        return Result(label, "refused", str(exc)[:120])
    except FamilyTimeout:
        raise
    except Exception as exc:
        return Result(label, "error", f"capture_run raised {type(exc).__name__}: {_short(str(exc))}")
    sites = {(site.layer_index, site.site): site.name for site in find_routers(model)}
    problems = check_bundle(Path(path), log, sites, tokens, reference)
    probe_problems, probed = probe_rules(model, Path(path))
    problems += probe_problems
    if problems:
        return Result(label, "mismatch", "; ".join(problems))
    note = f"; rule probed on {PROBE_ROWS} random positions x {probed} routers" if probed else ""
    return Result(label, "captured", _mixing(Path(path)) + note)


def main(argv: list[str] | None = None) -> int:
    """Sweep the families, print a line per family, the table and the summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--families", nargs="+", metavar="MODEL_TYPE", help="sweep only these model types")
    parser.add_argument("--variants", action="store_true", help="also sweep the config variants in VARIANTS")
    parser.add_argument("--tokens", type=int, default=6, help="new tokens to generate (default 6)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep checkpoints and bundles in DIR")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(2)

    families = moe_families()
    print(f"{len(families)} MoE families with a *ForCausalLM found in transformers")
    jobs: list[tuple[str, str, dict[str, Any] | None]] = [(f, f, None) for f in args.families or families]
    if args.variants:
        jobs += [(label, family, extra) for label, (family, extra) in VARIANTS.items()]
    work = args.keep or Path(tempfile.mkdtemp(prefix="family_sweep_"))
    results: list[Result] = []
    start = time.perf_counter()
    for label, model_type, extra in jobs:
        began = time.perf_counter()
        try:
            with time_limit(TIME_LIMIT_S):
                result = sweep_one(label, model_type, work, args.tokens, extra)
        except FamilyTimeout as exc:
            result = Result(label, "error", str(exc))
        except Exception as exc:  # never let one family stop the sweep
            result = Result(label, "error", f"{type(exc).__name__}: {_short(str(exc))}")
        result.seconds = time.perf_counter() - began
        results.append(result)
        print(f"{label:36s} {result.status:9s} {result.seconds:5.1f}s  {result.detail}", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| family | status | mixing rule / reason |")
    print("|---|---|---|")
    for result in results:
        print(f"| {result.family} | {result.status} | {result.detail.replace('|', '/')} |")
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    print()
    print(
        f"{len(results)} families: {counts['captured']} captured, {counts['refused']} refused, "
        f"{counts['mismatch']} mismatch, {counts['error']} error "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
