"""``inferoscope demo``: capture a run from the micro model shipped inside the package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .loading import load_local
from .run import capture_run

MICRO_MODEL = Path(__file__).resolve().parent.parent / "micro_model"
DEMO_PROMPT = "Return a new list of the items in the given order, and raise"
DEMO_TOKENS = 200
DEMO_SEED = 7


def capture_demo(
    out: Path | str = "runs",
    run_id: str = "demo-run",
    tokens: int = DEMO_TOKENS,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Capture ``run_id`` under ``out`` from the micro model (sampled, seed recorded)."""
    model, tokenizer = load_local(MICRO_MODEL, device="cpu", dtype="float32")
    return capture_run(
        model,
        tokenizer,
        DEMO_PROMPT,
        max_new_tokens=tokens,
        out=out,
        run_id=run_id,
        do_sample=True,
        seed=DEMO_SEED,
        temperature=0.8,
        min_new_tokens=tokens,
        model_id="inferoscope/micro-olmoe-4x16",
        tokenizer_id="inferoscope/micro-olmoe-4x16",
        on_step=on_step,
        contract="v0.1",  # the shipped example run is v0.1.0; the demo matches it
    )
