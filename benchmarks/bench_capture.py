"""Capture overhead: plain ``generate`` vs ``generate`` under RouterCapture, side by side.

Models (randomly initialised, built from config classes, saved and loaded back):
  - olmoe-1b-7b-routing: OLMoE-1B-7B's routing shape (16 layers x 64 experts, top-8), small hidden size
  - deepseek-v3-routing: DeepSeek-V3's routing (sigmoid + correction bias, 8 groups, top-4 groups,
    256 experts, top-8, 1 shared expert, the first layer dense), 4 layers, small hidden size
  - tiny-olmoe: 4 layers x 16 experts, top-2 (the micro model's shape)
For each: median of 5 runs of 64 greedy new tokens, tokens/s without and with the router hooks,
and the end-to-end ``capture_run`` (hooks + building events + validated atomic write).

    python benchmarks/bench_capture.py [--tokens 64] [--repeats 5] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--full-olmoe]
    (--full-olmoe adds full-width OLMoE-1B-7B and DeepSeek-V3 (few layers) configs; they need a GPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, OlmoeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inferoscope.capture import RouterCapture, capture_run
from tests.capture.tiny_models import tokenizer_files

SHAPES = {
    "olmoe-1b-7b-routing": dict(
        num_hidden_layers=16,
        num_experts=64,
        num_experts_per_tok=8,
        hidden_size=128,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
    "tiny-olmoe": dict(
        num_hidden_layers=4,
        num_experts=16,
        num_experts_per_tok=2,
        hidden_size=64,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
    "olmoe-1b-7b-full": dict(
        num_hidden_layers=16,
        num_experts=64,
        num_experts_per_tok=8,
        hidden_size=2048,
        intermediate_size=1024,
        num_attention_heads=16,
        num_key_value_heads=16,
    ),
}


DEEPSEEK = {
    "deepseek-v3-routing": dict(
        hidden_size=128, moe_intermediate_size=32, intermediate_size=128, kv_lora_rank=32
    ),
    "deepseek-v3-full": dict(
        hidden_size=7168, moe_intermediate_size=2048, intermediate_size=18432, kv_lora_rank=512
    ),
}


FULL_LAYERS = {"olmoe-1b-7b-full": 16, "deepseek-v3-full": 3}


def build(
    name: str, folder: Path, vocab: int, device: str, dtype: torch.dtype, direct: bool = False
) -> object:
    """The model, saved and loaded back with ``from_pretrained``; ``direct``: made on the device
    in ``dtype`` without the disk round trip (full-width models that would fill the disk)."""
    torch.manual_seed(0)
    if name in DEEPSEEK:
        config = DeepseekV3Config(
            vocab_size=vocab,
            max_position_embeddings=512,
            eos_token_id=None,
            pad_token_id=0,
            num_hidden_layers=FULL_LAYERS.get(name, 4),
            first_k_dense_replace=1,
            n_routed_experts=256,
            num_experts_per_tok=8,
            n_group=8,
            topk_group=4,
            n_shared_experts=1,
            num_attention_heads=8,
            num_key_value_heads=8,
            q_lora_rank=None,
            qk_rope_head_dim=16,
            qk_nope_head_dim=16,
            v_head_dim=16,
            **DEEPSEEK[name],
        )
    else:
        config = OlmoeConfig(
            vocab_size=vocab, max_position_embeddings=512, eos_token_id=None, pad_token_id=0, **SHAPES[name]
        )
    if direct:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # trained-like routing: spread router logits, non-zero selection biases
        for param_name, param in model.named_parameters():
            if param_name.endswith(("gate.weight", "router.weight")):
                param.normal_(0, 1.0)
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("e_score_correction_bias"):
                buffer.normal_(0, 0.5)
    if direct:
        model.train(False)
        return model
    model.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    model.train(False)
    return model


def timed_generate(model, inputs, tokens: int, hooks: bool) -> float:  # type: ignore[no-untyped-def]
    def go() -> None:
        with torch.no_grad():
            model.generate(
                **inputs,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
                disable_compile=True,
            )

    if inputs["input_ids"].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    if hooks:
        with RouterCapture(model):
            go()
    else:
        go()
    if inputs["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--full-olmoe", action="store_true")
    parser.add_argument(
        "--full-only", action="store_true", help="only the full-width models, made on the device directly"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    names = [] if args.full_only else ["olmoe-1b-7b-routing", "deepseek-v3-routing", "tiny-olmoe"]
    names += ["olmoe-1b-7b-full", "deepseek-v3-full"] if args.full_olmoe or args.full_only else []
    print(f"device {args.device}, dtype {args.dtype}, {args.tokens} new tokens, median of {args.repeats}")
    print(f"{'model':<22}{'plain tok/s':>13}{'hooks tok/s':>13}{'overhead':>10}{'capture_run tok/s':>19}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        tokenizer = tokenizer_files(root / "tok")
        for name in names:
            model = build(name, root / name, len(tokenizer), args.device, dtype, direct=name in FULL_LAYERS)
            inputs = tokenizer("the quick brown fox jumps over", return_tensors="pt").to(args.device)
            for hooks in (False, True):  # warm up both paths (kernels, caches, clocks)
                timed_generate(model, inputs, 16, hooks=hooks)
            plain, hooked = [], []
            for repeat in range(args.repeats):  # interleaved, alternating which goes first
                first = repeat % 2 == 1
                for hooks in (first, not first):
                    (hooked if hooks else plain).append(
                        timed_generate(model, inputs, args.tokens, hooks=hooks)
                    )
            start = time.perf_counter()
            capture_run(
                model,
                tokenizer,
                "the quick brown fox jumps over",
                max_new_tokens=args.tokens,
                out=root / "runs",
                run_id=name,
            )
            end_to_end = args.tokens / (time.perf_counter() - start)
            p, h = args.tokens / statistics.median(plain), args.tokens / statistics.median(hooked)
            print(f"{name:<22}{p:>13.1f}{h:>13.1f}{(p / h - 1) * 100:>9.1f}%{end_to_end:>19.1f}", flush=True)
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
