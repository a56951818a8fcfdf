"""Teacher-forced routing throughput: ``route_corpus`` vs a plain batched forward pass of the same
model over the same padded batches, side by side, and the peak RSS of each (fresh processes).

Model: OLMoE-1B-7B's routing shape (16 layers x 64 experts, top-8, hidden 128), random init,
saved and loaded back. Corpus: seeded documents of 64-256 tokens.

    python benchmarks/bench_route.py [--docs 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_validate import _peak_rss_mb


def corpus(count: int, seed: int = 3) -> list[str]:
    import random

    rng = random.Random(seed)
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by"]
    words += ["def", "return", "import", "class", "self", "print", "range", "list", "dict", "value"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(48, 200))) for _ in range(count)]


def measure(kind: str, docs: int, batch: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, OlmoeConfig

    from inferoscope.capture import Document, route_corpus
    from tests.capture.tiny_models import tokenizer_files

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        tokenizer = tokenizer_files(root / "tok")
        torch.manual_seed(0)
        config = OlmoeConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            num_hidden_layers=16,
            num_experts=64,
            num_experts_per_tok=8,
            hidden_size=128,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=0,
        )
        AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
        model = AutoModelForCausalLM.from_pretrained(root / "model")
        model.train(False)
        texts = corpus(docs)
        encoded = [tokenizer(text)["input_ids"] for text in texts]
        tokens = sum(len(ids) for ids in encoded)
        start = time.perf_counter()
        if kind == "forward":
            for first in range(0, docs, batch):
                chunk = encoded[first : first + batch]
                width = max(len(ids) for ids in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, item in enumerate(chunk):
                    ids[row, : len(item)] = torch.tensor(item)
                    mask[row, : len(item)] = 1
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
        else:
            route_corpus(
                model,
                tokenizer,
                [Document(i, t) for i, t in enumerate(texts)],
                out=root / "runs",
                batch=batch,
            )
        elapsed = time.perf_counter() - start
    return {"tokens": tokens, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.docs, args.batch)))
        return
    rows = {}
    for kind in ("forward", "route", "forward", "route"):  # twice each, interleaved; the best of two
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--docs", str(args.docs), "--batch", str(args.batch)],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        if kind not in rows or row["seconds"] < rows[kind]["seconds"]:
            rows[kind] = row
    print(f"{args.docs} documents, batch {args.batch}, {int(rows['forward']['tokens'])} tokens")
    print(f"{'':<26}{'tokens/s':>10}{'seconds':>9}{'peak RSS MiB':>14}")
    for kind, label in (("forward", "plain batched forward"), ("route", "route_corpus (bundles)")):
        row = rows[kind]
        rate = row["tokens"] / row["seconds"]
        print(f"{label:<26}{rate:>10.0f}{row['seconds']:>9.2f}{row['peak_rss_mb']:>14.0f}")
    ratio = rows["forward"]["seconds"] / rows["route"]["seconds"]
    print(f"route reaches {ratio:.0%} of the plain forward's tokens/s")


if __name__ == "__main__":
    main()
