"""One summary object for ``inspect``: the text view, the rich view and ``--json`` all read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle.lines import ProgressFn
from .bundle.reader import RunReader
from .bundle.report import ValidationReport
from .routing import Routing
from .versions import CONTINGENCY_FILE, DERIVED_FILE, MOTIF_LEDGER_FILE

_TOP = 3


@dataclass(slots=True)
class RunSummary:
    """What ``inspect`` reports about one bundle (after one validating pass)."""

    run_dir: Path
    manifest: dict[str, Any] | None
    report: ValidationReport
    optional_artifacts: dict[str, bool]
    layout: dict[str, Any] | None = None
    profile: str = "v0.1"
    routing: Routing | None = None

    @classmethod
    def of(cls, reader: RunReader, progress: ProgressFn | None = None) -> RunSummary:
        report = reader.validate(progress)
        present = {
            "derived": (reader.run_dir / DERIVED_FILE).exists(),
            "motif_ledger": (reader.run_dir / MOTIF_LEDGER_FILE).exists(),
            "contingency": (reader.run_dir / CONTINGENCY_FILE).exists(),
        }
        return cls(
            reader.run_dir, reader.manifest, report, present, reader.layout, reader.profile, reader.routing
        )

    def routing_rows(self) -> list[dict[str, Any]]:
        """Contract v0.2: what each routing group computes, as declared in the manifest."""
        if self.routing is None:
            return []
        return [
            {
                "group": group.name,
                "layers": list(group.layers),
                "num_experts": group.num_experts,
                "top_k": group.top_k,
                "scores": group.score_name,
                "selection": group.selection.describe(),
                "mixing_weights": group.mixing.describe(),
                "shared_experts": group.shared_experts,
                "recorded": sorted(group.arrays),
            }
            for group in self.routing.groups
        ]

    def field(self, key: str) -> Any:
        return (self.manifest or {}).get(key)

    @property
    def prompt_text(self) -> Any:
        prompt = self.field("prompt")
        return prompt.get("text") if isinstance(prompt, dict) else None

    def layer_expert_counts(self) -> list[tuple[int, int]]:
        layers = self.report.aggregates.layers
        return [(index, layers[index].num_total_experts) for index in sorted(layers)]

    def decode_duration(self) -> dict[str, float] | None:
        agg = self.report.aggregates
        if agg.duration_min is None or agg.duration_max is None or agg.duration_mean is None:
            return None
        return {"avg": agg.duration_mean, "max": agg.duration_max, "min": agg.duration_min}

    def layer_rows(self) -> list[dict[str, Any]]:
        rows = []
        for index in sorted(self.report.aggregates.layers):
            agg = self.report.aggregates.layers[index]
            ranked = agg.ranked_experts()
            rows.append(
                {
                    **agg.to_dict(),
                    "most_loaded": [(e, int(agg.load[e])) for e in ranked[:_TOP]] if agg.tokens else [],
                    "least_loaded": [(e, int(agg.load[e])) for e in ranked[::-1][:_TOP]]
                    if agg.tokens
                    else [],
                }
            )
        return rows

    def compat_dict(self) -> dict[str, Any]:
        """The keys the original ``python -m inferoscope.inspect --json`` printed.

        As there, the layers and their expert counts are the layout's (so a run of zero
        events still lists its layers).
        """
        layers = layout_expert_counts(self.layout)
        return {
            "run_id": self.field("run_id"),
            "created_at": self.field("created_at"),
            "model_id": self.field("model_id"),
            "tokenizer_id": self.field("tokenizer_id"),
            "raw_events": self.report.aggregates.events,
            "layers": layout_layer_count(self.layout),
            "layer_expert_counts": [{"layer_index": index, "num_total_experts": n} for index, n in layers],
            "optional_artifacts": dict(self.optional_artifacts),
            "prompt_text": self.prompt_text,
            "decode_duration_ms": self.decode_duration(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Every original key plus ours (seed, schema versions, per-layer stats, validation)."""
        data = self.compat_dict()
        durations = self.decode_duration()
        data.update(
            {
                "run_dir": str(self.run_dir),
                "seed": self.field("seed"),
                "schema_version": self.field("schema_version"),
                "derivation_version": self.field("derivation_version"),
                "derivation_config_id": self.field("derivation_config_id"),
                "generation_config": self.field("generation_config"),
                "capture_config": self.field("capture_config"),
                "decode_tokens_per_s": 1000.0 / durations["avg"]
                if durations and durations["avg"] > 0
                else None,
                "layer_stats": self.layer_rows(),
                "contract": self.profile,
                "routing": self.routing_rows() or None,
                "float_dtype": None if self.routing is None else self.routing.float_dtype,
                "validation": {
                    "ok": self.report.ok,
                    "issue_count": self.report.total,
                    "error_count": self.report.error_count,
                    "counts_by_code": self.report.counts_by_code(),
                },
            }
        )
        return data


def layout_layer_count(layout: Any) -> int:
    layers = layout.get("layers") if isinstance(layout, dict) else None
    return len(layers) if isinstance(layers, list) else 0


def layout_expert_counts(layout: Any) -> list[tuple[int, int]]:
    """(layer_index, number of positions) of each well-formed layout layer, by layer_index."""
    layers = layout.get("layers") if isinstance(layout, dict) else None
    counts = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        index, positions = layer.get("layer_index"), layer.get("positions")
        if isinstance(index, int) and not isinstance(index, bool) and isinstance(positions, list):
            counts.append((index, len(positions)))
    return sorted(counts)
