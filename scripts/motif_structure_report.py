"""Real vs SCRAMBLED motif structure of a run: the numbers behind docs/derive.md.

For the run and its scrambled twins (both variants, several seeds), derive motifs with the same
matcher and print: global and layer motif counts, mean fit (all tokens, and only those that
joined an existing motif), the share of tokens whose global motif is shared with another token,
and I(generated token id; motif) in bits beside its chance level (motif labels shuffled across
tokens, mean of 20): the plug-in MI is biased upward on small samples, so only the excess over
its own control is comparable between runs.

    python scripts/motif_structure_report.py [RUN_DIR] [--threshold 0.9] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from inferoscope import load_run_bundle
from inferoscope.cli import EXAMPLE_RUN
from inferoscope.derive import derive_events
from inferoscope.scramble import scrambled_events
from inferoscope.stats import mutual_information, shuffled_mutual_information


def structure(bundle: dict[str, Any], threshold: float) -> dict[str, float]:
    derived, ledger, _contingency = derive_events(bundle["manifest"], bundle["raw_events"], threshold)
    payload = ledger["ledger_payload"]
    ids = [e["token_id"] for e in bundle["raw_events"]]
    motifs = [d["derived_payload"]["global_motif"]["motif_id"] for d in derived]
    sizes = Counter(motifs)
    layer_mi, layer_ctl = [], []
    for layer in range(len(derived[0]["derived_payload"]["layer_motifs"])):
        labels = [d["derived_payload"]["layer_motifs"][layer]["motif_id"] for d in derived]
        layer_mi.append(mutual_information(ids, labels))
        layer_ctl.append(shuffled_mutual_information(ids, labels))
    return {
        "global": len(payload["global_motif_counts"]),
        "layer": len(payload["layer_motif_counts"]),
        "fit": statistics.fmean(d["derived_payload"]["global_motif"]["fit"] for d in derived),
        # founders have fit 1 by definition; the fit of tokens that joined a motif is the real test
        "joined_fit": statistics.fmean(
            [g["fit"] for d in derived if not (g := d["derived_payload"]["global_motif"])["novel"]]
            or [float("nan")]
        ),
        "shared": sum(1 for m in motifs if sizes[m] > 1) / len(motifs),
        "mi": mutual_information(ids, motifs),
        "mi_ctl": shuffled_mutual_information(ids, motifs),
        "layer_mi_excess": statistics.fmean(m - c for m, c in zip(layer_mi, layer_ctl, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", nargs="?", type=Path, default=EXAMPLE_RUN)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    bundle = load_run_bundle(args.run_dir)
    rows: list[tuple[str, dict[str, float]]] = [("real", structure(bundle, args.threshold))]
    for variant in ("tokens", "experts"):
        runs = [
            structure(
                {**bundle, "raw_events": scrambled_events(bundle["raw_events"], variant, seed)},
                args.threshold,
            )
            for seed in range(args.seeds)
        ]
        mean = {key: statistics.fmean(r[key] for r in runs) for key in runs[0]}
        rows.append((f"SCRAMBLED {variant} (mean of {args.seeds} seeds)", mean))
    print(f"{args.run_dir} · {len(bundle['raw_events'])} tokens · online cosine, threshold {args.threshold}")
    header = (
        f"{'':<36}{'global':>7}{'layer':>7}{'fit':>7}{'joined fit':>11}{'shared':>8}"
        f"{'MI bits':>9}{'chance':>8}{'excess':>8}{'layer excess':>14}"
    )
    print(header)
    for name, r in rows:
        print(
            f"{name:<36}{r['global']:>7.1f}{r['layer']:>7.1f}{r['fit']:>7.3f}{r['joined_fit']:>11.3f}{r['shared']:>8.2f}"
            f"{r['mi']:>9.2f}{r['mi_ctl']:>8.2f}{r['mi'] - r['mi_ctl']:>8.2f}{r['layer_mi_excess']:>14.2f}"
        )


if __name__ == "__main__":
    main()
