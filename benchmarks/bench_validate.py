"""Validation throughput and memory: a naive stack vs inferoscope's validating reader.

Generates OLMoE-shaped bundles (16 layers x 64 experts, top-8, seeded random logits) of
300, 5,000 and 50,000 tokens under .bench/ (reused on later runs), then measures, each in
a fresh subprocess so peak RSS is its own:

  (a) naive: json.loads + jsonschema per event + Python loops for the semantic checks (300 tokens)
  (b) inferoscope RunReader.validate() (5,000 and 50,000 tokens)
  (c) open + read token 0 (every size)

and prints one table of tokens/s, peak RSS and the speed-up over the naive baseline.

    python benchmarks/bench_validate.py [--sizes 300,5000,50000] [--out .bench]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

LAYERS, EXPERTS, TOP_K = 16, 64, 8
ROOT = Path(__file__).resolve().parent.parent


def generate(folder: Path, tokens: int, seed: int = 7) -> Path:
    """Write a valid OLMoE-shaped bundle of ``tokens`` tokens (vectorised, fast)."""
    from inferoscope.extraction import build_layer_grid_layout, build_manifest

    if (folder / "raw_trace.ndjson").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    run_id = folder.name
    manifest = build_manifest(
        run_id=run_id,
        created_at="2026-11-26T12:00:00Z",
        model_id="bench/olmoe-shaped",
        tokenizer_id="bench/olmoe-shaped",
        prompt_text="benchmark",
        seed=seed,
        derivation_version="motifs/v0.1.0-alpha",
        derivation_config_id="motifs/default-alpha",
    )
    layout = build_layer_grid_layout(
        run_id=run_id, layout_id="default-grid", layer_expert_counts=[(i, EXPERTS) for i in range(LAYERS)]
    )
    rng = np.random.default_rng(seed)
    encoder = msgspec.json.Encoder()
    partial = folder / "raw_trace.ndjson.partial"
    with partial.open("wb") as handle:
        for start in range(0, tokens, 1000):
            count = min(1000, tokens - start)
            logits = rng.standard_normal((count, LAYERS, EXPERTS))
            exps = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = exps / exps.sum(axis=-1, keepdims=True)
            order = np.argsort(-probs, axis=-1, kind="stable")[..., :TOP_K]
            top = np.take_along_axis(probs, order, axis=-1)
            entropy = -(probs * np.log(probs)).sum(axis=-1)
            lines = []
            for i in range(count):
                t = start + i
                layers = [
                    {
                        "entropy": float(entropy[i, li]),
                        "layer_index": li,
                        "layer_kind": "moe",
                        "normalized_entropy": float(entropy[i, li] / math.log(EXPERTS)),
                        "num_active_experts": TOP_K,
                        "num_total_experts": EXPERTS,
                        "router_probs": probs[i, li].tolist(),
                        "top1_prob": float(top[i, li, 0]),
                        "top1_top2_margin": float(top[i, li, 0] - top[i, li, 1]),
                        "topk_indices": order[i, li].tolist(),
                        "topk_probs": top[i, li].tolist(),
                    }
                    for li in range(LAYERS)
                ]
                event = {
                    "context_length": 12 + t,
                    "event_type": "token_complete",
                    "layers": layers,
                    "run_id": run_id,
                    "schema_version": "raw/v0.1.0",
                    "timing_ms": {
                        "decode_duration": 12.5,
                        "decode_end": 25.0 * t + 12.5,
                        "decode_start": 25.0 * t,
                    },
                    "token_id": int(rng.integers(0, 50280)),
                    "token_index": t,
                    "token_text": f" tok{t}",
                }
                lines.append(encoder.encode(event))
            handle.write(b"\n".join(lines) + b"\n")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (folder / "layout.json").write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    partial.rename(folder / "raw_trace.ndjson")
    return folder


# -- the naive baseline, written plainly --------------------------------------------------------
def naive_validate(folder: Path) -> int:
    import jsonschema

    schema = json.loads((ROOT / "schema/v0.1.0/raw_event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = 0
    with (folder / "raw_trace.ndjson").open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            event = json.loads(line)
            problems += sum(1 for _ in validator.iter_errors(event))
            timing = event["timing_ms"]
            if abs(timing["decode_duration"] - (timing["decode_end"] - timing["decode_start"])) > 1e-6:
                problems += 1
            if event["token_index"] != number:
                problems += 1
            for layer in event["layers"]:
                probs, idx, tp = layer["router_probs"], layer["topk_indices"], layer["topk_probs"]
                n, k = layer["num_total_experts"], layer["num_active_experts"]
                problems += len(probs) != n
                problems += len(idx) != k or len(tp) != k
                problems += len(set(idx)) != len(idx)
                problems += any(not 0 <= i < n for i in idx)
                problems += abs(sum(probs) - 1.0) > 1e-6
                problems += any(abs(p - probs[i]) > 1e-6 for i, p in zip(idx, tp, strict=False))
                chosen = set(idx)
                smallest = min(probs[i] for i in idx)
                problems += any(probs[j] > smallest + 1e-6 for j in range(n) if j not in chosen)
                problems += abs(layer["top1_prob"] - max(probs)) > 1e-6
                problems += abs(layer["top1_top2_margin"] - (tp[0] - tp[1])) > 1e-6
                entropy = -sum(p * math.log(p) for p in probs if p > 0)
                problems += abs(layer["entropy"] - entropy) > 1e-6
                problems += abs(layer["normalized_entropy"] - entropy / math.log(n)) > 1e-6
    return problems


# -- measurements, one per subprocess ----------------------------------------------------------
def _peak_rss_mb() -> float:
    """Peak RSS of this process and its finished workers (VmHWM: reset by exec, unlike ru_maxrss)."""
    own = 0.0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own + children


def measure(kind: str, folder: Path) -> dict[str, float]:
    tokens = sum(1 for _ in (folder / "raw_trace.ndjson").open("rb"))
    if kind == "naive":
        start = time.perf_counter()
        problems = naive_validate(folder)
        elapsed = time.perf_counter() - start
    elif kind in ("reader", "reader1"):
        from inferoscope import RunReader

        start = time.perf_counter()
        reader = RunReader(folder)
        reader.workers = 1 if kind == "reader1" else None
        report = reader.validate()
        elapsed = time.perf_counter() - start
        problems = report.total
    elif kind == "open":
        from inferoscope import RunReader

        start = time.perf_counter()
        event = RunReader(folder).event(0)
        elapsed = time.perf_counter() - start
        assert event["token_index"] == 0
        return {"tokens": tokens, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb(), "problems": 0}
    else:
        raise SystemExit(f"unknown measurement {kind}")
    return {"tokens": tokens, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb(), "problems": problems}


def run_child(kind: str, folder: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(folder)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="300,5000,50000")
    parser.add_argument("--naive-size", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / ".bench"))
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    folders = {}
    for size in sorted({*sizes, args.naive_size}):
        start = time.perf_counter()
        folders[size] = generate(out / f"olmoe-{size}", size)
        mb = (folders[size] / "raw_trace.ndjson").stat().st_size / 2**20
        ready = time.perf_counter() - start
        print(f"bundle {size:>6} tokens: {mb:8.1f} MiB raw trace (ready in {ready:.1f} s)", flush=True)
    rows = []
    naive = run_child("naive", folders[args.naive_size])
    naive_rate = naive["tokens"] / naive["seconds"]
    rows.append(("naive json+jsonschema+loops", naive))
    for size in sizes:
        if size == args.naive_size and size < 1000:
            continue
        rows.append(("inferoscope RunReader.validate", run_child("reader", folders[size])))
    rows.append(("  same, one process only", run_child("reader1", folders[max(sizes)])))
    print()
    print(f"{'validator':<32}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'peak RSS MiB':>14}{'x naive':>9}")
    for name, row in rows:
        rate = row["tokens"] / row["seconds"]
        print(
            f"{name:<32}{int(row['tokens']):>8}{row['seconds']:>10.2f}{rate:>11.0f}"
            f"{row['peak_rss_mb']:>14.0f}{rate / naive_rate:>9.0f}"
        )
    print()
    print(f"{'open + read token 0':<32}{'tokens':>8}{'ms':>10}{'peak RSS MiB':>14}")
    for size in sorted(folders):
        row = run_child("open", folders[size])
        print(
            f"{'RunReader(dir).event(0)':<32}{int(row['tokens']):>8}{row['seconds'] * 1000:>10.1f}"
            f"{row['peak_rss_mb']:>14.0f}"
        )


if __name__ == "__main__":
    main()
