"""The contract's sentence for each semantic issue code (the original library's wording).

An issue's ``message`` is this sentence, so issues compare equal to the original library's;
the values that broke the rule go in the issue's ``detail``.
"""

from __future__ import annotations

_MESSAGES = {
    "run_id_mismatch": "{artifact} run_id must match the manifest run_id.",
    "schema_version_mismatch": "{artifact} schema_version must match manifest artifact_versions.{key}.",
    "decode_duration_mismatch": (
        "timing_ms.decode_duration must equal decode_end - decode_start within tolerance."
    ),
    "duplicate_layer_index": "raw event layers must not repeat layer_index values.",
    "router_probs_length_mismatch": "router_probs length must equal num_total_experts.",
    "num_active_experts_must_be_positive": "num_active_experts must be at least 1.",
    "num_active_experts_exceeds_num_total_experts": "num_active_experts must not exceed num_total_experts.",
    "topk_length_mismatch": "topk_indices and topk_probs length must each equal num_active_experts.",
    "duplicate_topk_index": "topk_indices must not repeat expert indices within a layer.",
    "topk_index_out_of_bounds": "topk_indices entries must be within [0, num_total_experts).",
    "router_probs_sum_mismatch": "router_probs must sum to 1.0 within tolerance.",
    "topk_prob_mismatch": (
        "topk_probs must match router_probs at the corresponding topk_indices within tolerance."
    ),
    "topk_selection_mismatch": (
        "topk_indices must identify a valid highest-probability top-k set ordered from "
        "highest to lowest router probability."
    ),
    "top1_prob_mismatch": "top1_prob must equal the maximum router probability within tolerance.",
    "top1_top2_margin_mismatch": (
        "top1_top2_margin must equal topk_probs[0] - topk_probs[1] within tolerance."
    ),
    "entropy_mismatch": "entropy must equal -sum_i p_i ln(p_i) within tolerance.",
    "normalized_entropy_mismatch": "normalized_entropy must equal entropy / ln(num_total_experts) within "
    "tolerance.",
    "layout_duplicate_layer_index": "layout layers must not repeat layer_index values.",
    "duplicate_expert_index": "positions within a layer must not repeat expert_index values.",
    "raw_layer_expert_count_inconsistent": "raw events disagree on num_total_experts for layer {layer}.",
    "duplicate_raw_token_index": "raw events must not repeat token_index values within a bundle.",
    "raw_token_index_sequence_invalid": (
        "raw events must appear in contiguous token_index order starting at 0."
    ),
    "layout_expert_count_mismatch": "layout layer {layer} must contain {experts} expert positions.",
    "layout_expert_index_set_mismatch": "layout layer {layer} must cover expert indices 0 through {last}.",
    "derivation_version_mismatch": (
        "{artifact} derivation_version must match the manifest derivation_version."
    ),
    "derivation_config_mismatch": "{artifact} derivation_config_id must match the manifest "
    "derivation_config_id.",
    "duplicate_derived_token_index": "derived events must not repeat token_index values within a bundle.",
    "derived_token_index_missing_from_raw": "derived_event token_index must exist in the raw trace.",
    # contract v0.2 (docs/contract-v0.2.md)
    "routing_rule_invalid": "a routing group's rule must be possible for its shapes and arrays.",
    "routing_layer_repeated": "a MoE layer must belong to exactly one routing group.",
    "array_not_declared": "every array file a routing group names must be listed in manifest arrays.",
    "array_not_referenced": "every file listed in manifest arrays must be used by a routing group.",
    "array_path_repeated": "each array role of each group must have its own file.",
    "array_header_invalid": "an array file must be a C-ordered .npy array of a plain number type.",
    "array_dtype_mismatch": "an array file's dtype must match manifest arrays and its role.",
    "array_shape_mismatch": "an array file's shape must match manifest arrays and its role.",
    "array_size_mismatch": "an array file must hold exactly the bytes its header declares.",
    "array_row_count_mismatch": (
        "per-token arrays must have one row per raw event, prompt arrays one per prompt token."
    ),
    "array_checksum_mismatch": "an array file's SHA-256 must match manifest arrays.",
    "value_not_finite": "scores, weights and biases must be finite.",
    "score_out_of_range": "softmax and sigmoid scores must lie in [0, 1] within tolerance.",
    "score_sum_mismatch": "softmax scores must sum to 1.0 within tolerance.",
    "selected_index_out_of_bounds": "selected experts must be within [0, num_experts).",
    "duplicate_selected_index": "selected experts must not repeat within a layer.",
    "selection_mismatch": (
        "selected must be the experts the group's selection rule picks from its scores within tolerance."
    ),
    "weight_mismatch": (
        "weights must follow the group's mixing rule from the selected scores within tolerance."
    ),
}


def contract_message(code: str, **values: object) -> str:
    """The sentence for ``code``, filled with ``values`` (artifact, key, layer, experts, last)."""
    template = _MESSAGES.get(code)
    if template is None:  # a code without a sentence of its own is named plainly, never a crash
        return code.replace("_", " ") + "."
    return template.format(**values)
