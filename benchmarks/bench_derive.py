"""``inferoscope derive`` beside ``inferoscope validate`` of the same bundle, and the recall of the
approximate (capped) matcher against a search of every motif.

Runs (generated seeded, never checked in, under .bench/):
- ``demo-repeated``: the shipped demo run (the micro model, 4 layers x 16 experts, top-2) repeated
  to N tokens with its natural variation: a run with real structure. v0.1.0 NDJSON below
  100,000 tokens, contract v0.2 (``inferoscope convert``) from there on.
- ``random-logits``: the OLMoE-shaped (16 x 64, top-8) structureless worst case of
  ``bench_validate.generate`` (v0.1.0), or ``write_synthetic_v02`` from 100,000 tokens on.

Each command runs in a fresh process (wall time, peak RSS of the process and of its largest
worker). ``--recall`` also runs the capped matcher in audit mode on the random-logit runs: every
token's decision is compared with a search of every motif in the same state.

    python benchmarks/bench_derive.py [--sizes 5000,50000] [--cap 1024] [--recall]
    python benchmarks/bench_derive.py --sizes 500000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_commands import V02_FROM, timed
from bench_validate import ROOT, generate

DEMO = ROOT / "inferoscope" / "examples" / "demo-run"


def demo_repeated(size: int) -> Path:
    """The demo run's tokens repeated to ``size`` (token_index, context and timing renumbered)."""
    name = f"demo-repeated-{size}"
    folder = ROOT / ".bench" / name / name
    if (folder / "manifest.json").exists():
        return folder
    v01 = ROOT / ".bench" / f"{name}-v01" / name if size >= V02_FROM else folder
    if not (v01 / "manifest.json").exists():
        _repeat(v01, size)
    if size < V02_FROM:
        return folder
    from inferoscope.convert import convert_run

    convert_run(v01, folder.parent, to="v0.2")
    shutil.rmtree(v01.parent)
    return folder


def _repeat(folder: Path, size: int) -> None:
    events = [json.loads(line) for line in (DEMO / "raw_trace.ndjson").read_text().splitlines()]
    manifest = json.loads((DEMO / "manifest.json").read_text())
    layout = json.loads((DEMO / "layout.json").read_text())
    run_id = folder.name
    manifest["run_id"] = layout["run_id"] = run_id
    folder.mkdir(parents=True, exist_ok=True)
    step = events[-1]["timing_ms"]["decode_end"] + 1.0
    with (folder / "raw_trace.ndjson.partial").open("w") as handle:
        for t in range(size):
            cycle, source = divmod(t, len(events))
            event = dict(events[source], token_index=t, run_id=run_id)
            event["context_length"] = events[source]["context_length"] + cycle * len(events)
            event["timing_ms"] = {
                k: v if k == "decode_duration" else v + cycle * step
                for k, v in events[source]["timing_ms"].items()
            }
            handle.write(json.dumps(event, sort_keys=True) + "\n")
    for name, obj in (("manifest.json", manifest), ("layout.json", layout)):
        (folder / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    (folder / "raw_trace.ndjson.partial").rename(folder / "raw_trace.ndjson")


def random_logits(size: int) -> Path:
    if size < V02_FROM:
        return generate(ROOT / ".bench" / f"olmoe-{size}", size)
    root = ROOT / ".bench" / f"olmoe-{size}-v02"
    name = f"olmoe-{size}"
    if not (root / name / "manifest.json").exists():
        from inferoscope.synthetic import write_synthetic_v02

        write_synthetic_v02(root, name, size, seed=7)
    return root / name


def recall(run: Path, cap: int) -> tuple[float, float, float]:
    """(global recall, mean layer recall, seconds) of the capped matcher in audit mode."""
    from inferoscope.bundle.reader import RunReader
    from inferoscope.derive import Derivation
    from inferoscope.derive_inputs import reader_blocks

    reader = RunReader(run)
    start = time.perf_counter()
    derivation = Derivation(reader.manifest or {}, 0.9, cap=cap, audit=True)
    for block in reader_blocks(reader):
        derivation.lines(block)
    seconds = time.perf_counter() - start
    glob = derivation.global_clusters
    layers = list(derivation.layer_clusters.values())
    layer_recall = sum(c.agreed / max(1, c.audited) for c in layers) / max(1, len(layers))
    return glob.agreed / max(1, glob.audited), layer_recall, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--cap", type=int, default=1024)
    parser.add_argument("--runs", default="demo-repeated,random-logits")
    parser.add_argument("--recall", action="store_true")
    args = parser.parse_args()
    print(
        f"{'tokens':>8} {'run':<14} {'command':<28}{'seconds':>9}{'x validate':>11}"
        f"{'RSS MiB':>9}{'worker':>8}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        for kind in args.runs.split(","):
            source = demo_repeated(size) if kind == "demo-repeated" else random_logits(size)
            exact = kind == "demo-repeated" or size <= 5000  # exact on a structureless run is quadratic
            with tempfile.TemporaryDirectory(dir=ROOT / ".bench") as scratch:
                copy = Path(scratch) / source.name
                shutil.copytree(source, copy)
                for name in ("derived.ndjson", "motif_ledger.json", "contingency.json"):
                    (copy / name).unlink(missing_ok=True)
                plans = [("validate", ["validate", str(copy)])]
                if exact:
                    plans.append(("derive (exact, 0.90)", ["derive", str(copy)]))
                plans.append((f"derive --cap {args.cap}", ["derive", str(copy), "--cap", str(args.cap)]))
                base = None
                for label, command in plans:
                    seconds, own, child = timed(*command)
                    base = base or seconds
                    print(
                        f"{size:>8} {kind:<14} {label:<28}{seconds:>9.2f}{seconds / base:>11.2f}"
                        f"{own:>9.0f}{child:>8.0f}",
                        flush=True,
                    )
            if args.recall and kind == "random-logits":
                glob, layer, seconds = recall(source, args.cap)
                print(
                    f"{size:>8} {kind:<14} recall of --cap {args.cap}: global {glob:.4f}, "
                    f"layers (mean) {layer:.4f} (audit run {seconds:.1f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
