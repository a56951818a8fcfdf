"""Train the shipped micro model: a small OLMoE (4 layers x 16 experts, top-2) and its BPE tokenizer.

Text: the docstrings of the Python standard library's own source files (every installation has
them), read with ``ast`` in sorted file order, so the corpus is the same on every run of the
same Python version. Deterministic seeds; a few minutes on 2 CPU cores.

    python scripts/train_micro_model.py [--out inferoscope/micro_model] [--steps 600]

Writes config.json, model.safetensors, tokenizer files and training.json (corpus, steps, loss).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch
from transformers import OlmoeConfig, OlmoeForCausalLM, PreTrainedTokenizerFast

from inferoscope.capture.tokenizer import train_byte_level_bpe

SEED = 20261126
VOCAB = 2048
CONTEXT = 128
MAX_CORPUS_CHARS = 3_000_000


def stdlib_docstrings(limit: int = MAX_CORPUS_CHARS) -> list[str]:
    """Docstrings of the standard library's .py files, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(("test/", "idlelib/", "lib2to3/", "site-packages/")) or "/test" in relative:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40 and doc.isascii():
                    texts.append(doc.strip())
                    total += len(doc)
        if total >= limit:
            break
    return texts


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    return train_byte_level_bpe(texts, VOCAB)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("inferoscope/micro_model"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()

    texts = stdlib_docstrings()
    tokenizer = train_tokenizer(texts)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [eos]
    data = torch.tensor(ids, dtype=torch.long)
    held_out = data[-20_000:]
    data = data[:-20_000]
    print(f"corpus: {len(texts)} docstrings, {sum(map(len, texts))} chars, {len(ids)} tokens", flush=True)

    config = OlmoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=16,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        router_aux_loss_coef=0.01,
        output_router_logits=True,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = OlmoeForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=args.steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    losses = []
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (args.batch,), generator=generator)
        batch = torch.stack([data[s : s + CONTEXT] for s in starts.tolist()])
        out = model(input_ids=batch, labels=batch)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(out.loss))
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step:4d} loss {out.loss.item():.3f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )

    model.eval()
    with torch.no_grad():
        chunks = held_out[: (len(held_out) // CONTEXT) * CONTEXT].view(-1, CONTEXT)
        held_loss = float(model(input_ids=chunks, labels=chunks).loss)
    model.config.output_router_logits = False
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "training.json").write_text(
        json.dumps(
            {
                "architecture": "OLMoE (transformers OlmoeForCausalLM)",
                "layers": 4,
                "experts": 16,
                "top_k": 2,
                "hidden_size": 64,
                "vocab_size": len(tokenizer),
                "corpus": "docstrings of the Python standard library source files (ast, sorted paths)",
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "docstrings": len(texts),
                "train_tokens": len(data),
                "held_out_tokens": len(held_out),
                "seed": SEED,
                "steps": args.steps,
                "batch": args.batch,
                "context": CONTEXT,
                "final_train_loss": round(sum(losses[-20:]) / 20, 4),
                "held_out_loss": round(held_loss, 4),
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"held-out loss {held_loss:.3f}; saved to {args.out}")


if __name__ == "__main__":
    main()
