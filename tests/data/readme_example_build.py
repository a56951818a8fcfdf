from pathlib import Path
from tempfile import TemporaryDirectory

from inferoscope.extraction import (
    MoELayerCaptureInput,
    build_layer_grid_layout,
    build_manifest,
    build_token_complete_event,
    load_run_bundle,
    write_run_bundle,
)

manifest = build_manifest(
    run_id="demo-run",
    created_at="2026-03-21T12:00:00Z",
    model_id="allenai/OLMoE-1B-7B-0125",
    tokenizer_id="allenai/OLMoE-1B-7B-0125",
    prompt_text="hello",
    derivation_version="motifs/v0.1.0-alpha",
    derivation_config_id="motifs/default-alpha",
    generation_config={"max_new_tokens": 8},
)

raw_event = build_token_complete_event(
    run_id="demo-run",
    token_index=0,
    token_id=42,
    token_text=" world",
    context_length=5,
    decode_start_ms=10.0,
    decode_end_ms=25.0,
    layer_inputs=[
        MoELayerCaptureInput(
            layer_index=0,
            router_logits=[2.0, 1.0, 0.0, -1.0],
            num_active_experts=2,
        )
    ],
)

layout = build_layer_grid_layout(
    run_id="demo-run",
    layout_id="default-grid",
    layer_expert_counts=[(0, 4)],
)

with TemporaryDirectory() as bundle_root:
    run_dir = write_run_bundle(Path(bundle_root), manifest, [raw_event], layout)
    bundle = load_run_bundle(run_dir)

    print(run_dir)
    print(bundle["raw_events"][0]["layers"][0]["topk_indices"])
