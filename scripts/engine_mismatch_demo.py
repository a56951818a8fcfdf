"""An engine-mismatch walk-through on the shipped micro model: the "engine" serves in bfloat16, the
training side replays in float32, and ``compare`` shows where and how near the top-k flips are.

1. The micro model in bfloat16 generates greedily from a standard-library docstring; the experts its
   routers chose for every fed-forward position are written exactly as SGLang's ``/generate``
   returns them (``meta_info.routed_experts``: base64 of int32 ``[rows, layers, k]``).
2. ``inferoscope import-engine`` reads that file, ``inferoscope replay`` teacher-forces the same token
   ids through the float32 model, ``inferoscope compare`` reports set, order and top-1 agreement and,
   where the sets differ, the margin in the replay's scores beside the usual top-k boundary gap.

    python scripts/engine_mismatch_demo.py [--tokens 400] [--out .bench/engine-demo]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "inferoscope" / "micro_model"


def engine_response(tokens: int, out: Path) -> Path:
    """The bfloat16 "engine" run as SGLang's HTTP response, with the prompt ids beside it."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inferoscope.capture.route import _route_batch
    from inferoscope.capture.routers import find_routers

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16).eval()
    prompt = tokenizer(json.__doc__.split("\n\n")[1])["input_ids"]
    with torch.no_grad():
        full = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
        )[0].tolist()
    ids = torch.tensor([full[:-1]])  # the last generated token is never fed forward: no row
    sites = find_routers(model)
    _logits, _weights, selected = _route_batch(model, sites, ids, torch.ones_like(ids))
    rows = np.zeros((ids.shape[1], model.config.num_hidden_layers, selected.shape[-1]), dtype="<i4")
    for slot, site in enumerate(sites):
        rows[:, site.layer_index] = selected[0, :, slot]
    response = {
        "text": tokenizer.decode(full[len(prompt) :]),
        "output_ids": full[len(prompt) :],
        "meta_info": {
            "routed_experts": base64.b64encode(rows.tobytes()).decode("ascii"),
            "routed_experts_start_len": 0,
        },
    }
    path = out / "sglang_response.json"
    path.write_text(json.dumps({"input_ids": prompt, "response": response}))
    return path


def run(*args: str) -> None:
    command = ["inferoscope", *args]
    print("$ " + " ".join(command), flush=True)
    subprocess.run([sys.executable, "-m", "inferoscope", *args], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="An engine-mismatch walk-through on the shipped micro model: a bfloat16 'engine' run "
        "(SGLang's format) imported, replayed in float32 and compared."
    )
    parser.add_argument("--tokens", type=int, default=400, help="tokens the engine generates")
    parser.add_argument(
        "--out",
        default=str(ROOT / ".bench" / "engine-demo"),
        help="folder for the engine file and the runs (replaced)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    source = engine_response(args.tokens, out)
    runs = out / "runs"
    model = str(MODEL.relative_to(ROOT))
    run("import-engine", str(source), "--format", "sglang", "--tokenizer", model, "--out", str(runs),
        "--run-id", "engine")  # fmt: skip
    run("replay", str(runs / "engine"), "--model", model, "--out", str(runs))
    run("compare", str(runs / "engine"), str(runs / "engine-replay"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
