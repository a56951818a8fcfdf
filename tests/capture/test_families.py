"""Capture from real transformers models of each MoE family, loaded with from_pretrained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from inferoscope import RunReader, load_run_bundle
from inferoscope.capture import CaptureError, RouterCapture, capture_run, find_routers

from .tiny_models import save_tiny, tokenizer_files

FAMILIES = ["olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "granitemoe"]
PROMPT = "the quick brown fox"
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: save_tiny(family, root / family) for family in [*FAMILIES, "deepseek_v3"]}


def _load(folder: Path) -> tuple[Any, Any]:
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_records_exactly_what_the_routers_chose(
    family: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model, tokenizer = _load(checkpoints[family])
    plain = model.generate(
        **tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    hooks_before = _hook_count(model)

    chosen: dict[int, list[list[int]]] = {}  # the routers' own outputs, observed independently
    handles = [
        site.module.register_forward_hook(
            lambda _m, _i, out, layer=site.layer_index: chosen.setdefault(layer, []).append(
                next(t for t in out if not t.is_floating_point())[-1].tolist()
            )
        )
        for site in find_routers(model)
    ]
    try:
        run = capture_run(
            model, tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, out=tmp_path, run_id=family, contract="v0.1"
        )
    finally:
        for handle in handles:
            handle.remove()

    assert _hook_count(model) == hooks_before
    report = RunReader(run).validate()
    assert report.ok, [i.describe() for i in report.issues]
    bundle = load_run_bundle(run)
    events = bundle["raw_events"]
    prompt_length = bundle["manifest"]["generation_config"]["prompt_tokens"]
    generated = plain[0, prompt_length:].tolist()
    assert [e["token_id"] for e in events] == generated  # capture does not change generation
    assert [e["context_length"] for e in events] == [prompt_length + t for t in range(len(events))]
    for t, event in enumerate(events):
        for layer in event["layers"]:
            assert layer["topk_indices"] == chosen[layer["layer_index"]][t]

    # reference: one forward over the whole sequence, the routing transformers itself reports
    with torch.no_grad():
        reference = model(plain[:, :-1], output_router_logits=True).router_logits
    layers = bundle["manifest"]["capture_config"]["moe_layer_indices"]
    assert len(reference) == len(layers)
    for row, layer_index in enumerate(layers):
        probs = torch.softmax(reference[row].double(), dim=-1).numpy()
        for t, event in enumerate(events):
            layer = next(la for la in event["layers"] if la["layer_index"] == layer_index)
            expected = probs[prompt_length - 1 + t]
            assert np.allclose(layer["router_probs"], expected, atol=1e-5)
            assert set(layer["topk_indices"]) == set(
                np.argsort(-expected, kind="stable")[: len(layer["topk_indices"])]
            )


def test_qwen2_moe_keeps_true_layer_indices_between_dense_layers(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model, tokenizer = _load(checkpoints["qwen2_moe"])
    run = capture_run(model, tokenizer, PROMPT, max_new_tokens=2, out=tmp_path, contract="v0.1")
    event = load_run_bundle(run)["raw_events"][0]
    assert [layer["layer_index"] for layer in event["layers"]] == [1, 3]
    assert load_run_bundle(run)["layout"]["layers"][0]["layer_index"] == 1


def test_prefill_routing_is_kept_apart_from_the_events(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, tokenizer = _load(checkpoints["olmoe"])
    run = capture_run(model, tokenizer, PROMPT, max_new_tokens=3, out=tmp_path, contract="v0.1")
    bundle = load_run_bundle(run)
    config = bundle["manifest"]["capture_config"]
    positions = config["prefill_routing"]["positions"]
    assert positions == bundle["manifest"]["generation_config"]["prompt_tokens"]
    assert [len(layer["topk_indices"]) for layer in config["prefill_routing"]["layers"]] == [positions] * 3
    assert len(bundle["raw_events"]) == 3
    assert "softmax" in config["probability_definition"] and config["mixing_weights"]


def test_sampling_records_its_seed_and_repeats(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, tokenizer = _load(checkpoints["mixtral"])
    runs = [
        capture_run(
            model,
            tokenizer,
            PROMPT,
            max_new_tokens=5,
            out=tmp_path / str(i),
            contract="v0.1",
            do_sample=True,
            seed=1234,
            run_id="sampled",
        )
        for i in range(2)
    ]
    bundles = [load_run_bundle(run) for run in runs]
    assert bundles[0]["manifest"]["seed"] == 1234
    assert [e["token_id"] for e in bundles[0]["raw_events"]] == [
        e["token_id"] for e in bundles[1]["raw_events"]
    ]


def test_deepseek_v3_cannot_be_written_as_v01(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, tokenizer = _load(checkpoints["deepseek_v3"])
    with pytest.raises(CaptureError, match="sigmoid"):
        capture_run(model, tokenizer, PROMPT, max_new_tokens=2, out=tmp_path, contract="v0.1")
    assert list(tmp_path.iterdir()) == []


def test_deepseek_v3_is_recorded_as_v02_with_its_own_rule(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Sigmoid scores plus a non-zero correction bias, group-limited, weights renormalised and
    scaled: the bundle holds what the router returned, and the declared rule is proven both on the
    capture and on 2,000 random positions fed to each router directly."""
    from inferoscope.routing import expected_weights, selection_keys, selection_violations

    model, tokenizer = _load(checkpoints["deepseek_v3"])
    seen: dict[int, list[tuple[Any, Any]]] = {}
    routers = find_routers(model)

    def observe(layer: int) -> Any:
        def hook(_module: Any, _inputs: Any, out: Any) -> None:
            weights = next(t for t in out if t.is_floating_point() and t.shape[-1] == out[2].shape[-1])
            seen.setdefault(layer, []).append((out[2][-1].tolist(), weights[-1].clone()))

        return hook

    handles = [site.module.register_forward_hook(observe(site.layer_index)) for site in routers]
    try:
        run = capture_run(model, tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, out=tmp_path, run_id="ds")
    finally:
        for handle in handles:
            handle.remove()
    reader = RunReader(run)
    assert reader.validate().ok
    assert reader.routing is not None
    (group,) = reader.routing.groups
    config = model.config
    assert group.layers == (1,)  # layer 0 is dense (first_k_dense_replace)
    assert group.score_function == "sigmoid" and group.selection.bias
    assert (group.selection.rule, group.selection.n_group, group.selection.topk_group) == (
        "group_limited_topk",
        config.n_group,
        config.topk_group,
    )
    assert group.mixing.rule == "renormalize" and group.mixing.scale == pytest.approx(
        config.routed_scaling_factor
    )
    assert group.shared_experts == config.n_shared_experts
    bias = reader.sidecar().whole(group, "bias")
    module = routers[0].module
    assert bias is not None and np.array_equal(bias[0], module.e_score_correction_bias.numpy())
    assert np.abs(bias).max() > 0.1  # a bias that matters, not transformers' zero init
    for t in range(len(reader)):
        layer = reader.token_event(t).layers[0]
        indices, weights = seen[1][t]
        assert list(layer.selected) == indices
        assert layer.weights is not None and np.array_equal(layer.weights.astype(np.float32), weights.numpy())
    # the rule on many random positions, straight through the router
    torch.manual_seed(1)
    probe = torch.randn(2000, config.hidden_size)
    with torch.no_grad():
        logits, weights, indices = module(probe)
    scores = torch.sigmoid(logits).double().numpy()
    keys = selection_keys(scores, bias[0])
    bad, _ = selection_violations(keys, indices.numpy(), group.selection, 1e-5)
    assert not bad.any()
    expected = expected_weights(np.take_along_axis(scores, indices.numpy(), 1), group.mixing)
    assert expected is not None and np.allclose(weights.numpy(), expected, atol=1e-5)


def test_a_dense_model_gets_a_clear_error(tmp_path: Path) -> None:
    tokenizer = tokenizer_files(tmp_path)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    with pytest.raises(CaptureError, match="no Mixture-of-Experts router"):
        capture_run(model, tokenizer, PROMPT, out=tmp_path / "runs")


def test_empty_prompt_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, tokenizer = _load(checkpoints["olmoe"])
    with pytest.raises(CaptureError, match="empty"):
        capture_run(model, tokenizer, "   ", out=tmp_path)


def test_hooks_are_removed_when_generation_fails(checkpoints: dict[str, Path]) -> None:
    model, _tokenizer = _load(checkpoints["olmoe"])
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"), RouterCapture(model):
        assert _hook_count(model) > before
        raise RuntimeError("boom")
    assert _hook_count(model) == before


#: what each family's router does with the selected experts' softmax scores
MIXING = {
    "olmoe": "gather",  # norm_topk_prob is off in the tiny config
    "mixtral": "renormalize",
    "qwen2_moe": "renormalize",
    "qwen3_moe": "renormalize",
    "gpt_oss": "renormalize",  # a softmax over the k selected logits is the renormalised softmax
    "granitemoe": "renormalize",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_v02_records_the_routers_selection_weights_and_scores(
    family: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model, tokenizer = _load(checkpoints[family])
    seen: dict[int, list[tuple[Any, Any, Any]]] = {}  # every router call, observed independently

    def observe(layer: int) -> Any:
        def hook(_module: Any, _inputs: Any, out: Any) -> None:
            floats = [t for t in out if t.is_floating_point()]
            logits = max(floats, key=lambda t: t.shape[-1])
            index = next(t for t in out if not t.is_floating_point())
            weights = next(t for t in floats if t is not logits)
            seen.setdefault(layer, []).append(
                (logits.detach().float().clone(), weights.detach().float().clone(), index.clone())
            )

        return hook

    handles = [site.module.register_forward_hook(observe(site.layer_index)) for site in find_routers(model)]
    try:
        run = capture_run(model, tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, out=tmp_path, run_id=family)
    finally:
        for handle in handles:
            handle.remove()
    reader = RunReader(run)
    report = reader.validate()
    assert report.ok, [i.describe() for i in report.issues]
    assert reader.profile == "v0.2"
    group = reader.routing.groups[0] if reader.routing else None
    assert group is not None and group.mixing.rule == MIXING[family] and group.score_function == "softmax"
    assert list(group.layers) == sorted(seen)
    prompt_ids = reader.manifest["prompt"]["token_ids"]
    assert prompt_ids == tokenizer(PROMPT)["input_ids"]
    for t in range(len(reader)):
        event = reader.token_event(t)
        assert event.context_length == len(prompt_ids) + t
        for layer in event.layers:
            logits, weights, index = seen[layer.layer_index][t]  # call 0 (the prompt) made token 0
            assert list(layer.selected) == index[-1].tolist()  # the router's order
            assert layer.weights is not None
            assert np.array_equal(layer.weights.astype(np.float32), weights[-1].numpy())
            assert layer.scores is not None
            assert np.allclose(layer.scores, torch.softmax(logits[-1].double(), -1).numpy(), atol=1e-6)
    sidecar = reader.sidecar()
    prompt_selected = sidecar.whole(group, "prompt_selected")
    prompt_weights = sidecar.whole(group, "prompt_weights")
    assert prompt_selected is not None and prompt_weights is not None
    for slot, layer_index in enumerate(group.layers):
        _logits, weights, index = seen[layer_index][0]
        assert np.array_equal(prompt_selected[:, slot], index.numpy())
        assert np.array_equal(prompt_weights[:, slot], weights.numpy())


def test_v02_bundle_of_a_bfloat16_model_checks_with_its_tolerance(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model, tokenizer = _load(checkpoints["mixtral"])
    model = model.to(torch.bfloat16)
    run = capture_run(model, tokenizer, PROMPT, max_new_tokens=4, out=tmp_path, store_dtype="bfloat16")
    reader = RunReader(run)
    assert reader.validate().ok
    assert reader.manifest["routing"]["float_dtype"] == "bfloat16"
    assert reader.manifest["routing"]["tolerance"] == pytest.approx(1.6e-2)
