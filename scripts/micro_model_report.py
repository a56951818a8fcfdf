"""Does the micro model route with structure? Mutual information of token and top-1 expert.

Per MoE layer, I(input token id; top-1 expert) in bits, for (a) the demo run captured by
``inferoscope demo`` (each event's routing is that of the forward pass whose last input token
is the previous token, so the input token is the one that was routed) and (b) a forward pass
over held-out standard-library docstring text, each against the same data with the routing
shuffled across tokens within the layer (the chance level of the estimate at that sample size).

    python scripts/micro_model_report.py [--run runs/demo-run]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_micro_model import stdlib_docstrings

from inferoscope import load_run_bundle
from inferoscope.capture.demo import MICRO_MODEL
from inferoscope.capture.loading import load_local
from inferoscope.stats import mutual_information, shuffled_mutual_information


def from_run(run: Path) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    bundle = load_run_bundle(run)
    events = bundle["raw_events"]
    tokens = [e["token_id"] for e in events]
    inputs = np.array(tokens[:-1])  # event t+1 was routed at the token of event t
    top1 = {}
    for layer in events[0]["layers"]:
        index = layer["layer_index"]
        top1[index] = np.array(
            [
                next(la for la in e["layers"] if la["layer_index"] == index)["topk_indices"][0]
                for e in events[1:]
            ]
        )
    return inputs, top1


def from_held_out(tokens: int = 8192) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    model, tokenizer = load_local(MICRO_MODEL, device="cpu", dtype="float32")
    ids: list[int] = []
    for text in stdlib_docstrings():
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    held = torch.tensor(ids[-tokens:]).view(-1, 128)
    with torch.no_grad():
        logits = model(held, output_router_logits=True).router_logits
    return held.reshape(-1).numpy(), {i: layer.argmax(dim=-1).numpy() for i, layer in enumerate(logits)}


def report(name: str, inputs: np.ndarray, top1: dict[int, np.ndarray]) -> None:
    print(f"{name}: {inputs.size} routed tokens")
    print(f"{'layer':>6}{'I(token; top-1) bits':>22}{'shuffled':>10}{'ratio':>8}")
    for layer, experts in sorted(top1.items()):
        real = mutual_information(inputs, experts)
        chance = shuffled_mutual_information(inputs, experts)
        print(f"{layer:>6}{real:>22.3f}{chance:>10.3f}{real / chance:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/demo-run"))
    args = parser.parse_args()
    report(f"demo run {args.run}", *from_run(args.run))
    report("held-out docstrings", *from_held_out())


if __name__ == "__main__":
    main()
