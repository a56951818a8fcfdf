"""Tiny MoE models of each family, built from their config classes and saved to disk.

Tests load them back with ``from_pretrained`` from a local directory: the real path a user
takes with a checkpoint. The tokenizer is a small byte-level BPE trained on the spot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "routing experts in a mixture of experts model",
    "hello world, tokens and layers and experts",
] * 20
COMMON = dict(
    hidden_size=32,
    intermediate_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def tokenizer_files(folder: Path) -> Any:
    from inferoscope.capture.tokenizer import train_byte_level_bpe

    fast = train_byte_level_bpe(TEXT, 320, end_token="<eos>")
    fast.save_pretrained(folder)
    return fast


def family_config(family: str, vocab_size: int) -> Any:
    import transformers as tf

    ids = dict(vocab_size=vocab_size, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    if family == "olmoe":
        return tf.OlmoeConfig(**COMMON, **ids, num_hidden_layers=3, num_experts=8, num_experts_per_tok=2)
    if family == "mixtral":
        return tf.MixtralConfig(
            **COMMON, **ids, num_hidden_layers=2, num_local_experts=6, num_experts_per_tok=2
        )
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(
            **COMMON,
            **ids,
            num_hidden_layers=4,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            decoder_sparse_step=2,
            mlp_only_layers=[],
            norm_topk_prob=True,
        )
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **COMMON,
            **ids,
            num_hidden_layers=2,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            head_dim=8,
            norm_topk_prob=True,
        )
    if family == "gpt_oss":
        return tf.GptOssConfig(
            **COMMON,
            **ids,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            head_dim=8,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
        )
    if family == "granitemoe":
        return tf.GraniteMoeConfig(
            **COMMON, **ids, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2
        )
    if family == "deepseek_v3":
        return tf.DeepseekV3Config(
            **COMMON,
            **ids,
            num_hidden_layers=2,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            first_k_dense_replace=1,
            moe_intermediate_size=16,
            kv_lora_rank=8,
            q_lora_rank=None,
            qk_rope_head_dim=4,
            qk_nope_head_dim=4,
            v_head_dim=8,
            n_shared_experts=1,
        )
    raise ValueError(family)


def save_tiny(family: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    fast = tokenizer_files(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, len(fast)))
    with torch.no_grad():  # random init is near-uniform; spread the routers so choices are clear
        for name, param in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")):
                param.normal_(0, 1.0)
        for name, buffer in model.named_buffers():  # trained routers have non-zero selection biases
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder
