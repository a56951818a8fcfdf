"""Expert specialisation by source, with a permutation null that respects documents.

For each MoE layer and expert: the share of its selections that come from each source, over the
source's share of all selections (the *lift*; 1 = no preference), and per layer the mutual
information between a selection's source and its expert (bits). Beside every number, the same
number under a null model: the sources are shuffled across *documents* (not tokens), so routing
that is merely correlated within a document is not mistaken for specialisation; the null's 99th
percentile and a permutation p-value, ``(1 + #null >= observed) / (1 + permutations)``.

A study makes many tests (every layer, source and expert), so what is *marked* is controlled for
that, with the same permutations (Westfall-Young max-T): each lift is standardised by its own
null's mean and spread, and its adjusted p-value is the share of permutations whose *largest*
standardised lift over the whole study reaches it (the layers' mutual information likewise,
over the layers). A number beats the null when its adjusted p-value is at most ``ALPHA`` (0.01):
the chance that the study marks anything by chance alone is at most 1%. The per-test p-values
are given beside them, unadjusted.

Everything is computed from one ``[layers, experts]`` count matrix per document, so a corpus of
any size costs its documents, not its tokens; each permutation is one matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.reader import RunReader

DEFAULT_PERMUTATIONS = 1000
#: the false discovery rate at which a lean (or a layer's mutual information) is marked
ALPHA = 0.01


class SpecialiseError(ValueError):
    """The runs cannot be compared by source (one line saying why)."""


@dataclass(slots=True)
class DocumentCounts:
    source: str
    tokens: int
    counts: np.ndarray  # [layers, experts] selections


@dataclass(slots=True)
class LayerSpecialisation:
    layer_index: int
    mutual_information: float
    mi_null_p99: float
    mi_p_value: float
    lift: np.ndarray  # [sources, experts]
    lift_null_p99: np.ndarray  # [sources, experts]
    lift_p_value: np.ndarray  # [sources, experts]
    mi_p_adjusted: float = 1.0  # max-T over the study's layers
    lift_p_adjusted: np.ndarray = field(default_factory=lambda: np.ones((0, 0)))  # over every lift test

    @property
    def beats_null(self) -> bool:
        return self.mi_p_adjusted <= ALPHA

    def leaning(
        self, sources: list[str], alpha: float = ALPHA, top: int = 5
    ) -> dict[str, list[dict[str, Any]]]:
        """Per source, the experts that lean to it most (lift > 1), each marked where it beats the
        null after the study's multiple-testing control (adjusted p-value <= ``alpha``)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for s, name in enumerate(sources):
            order = np.argsort(-self.lift[s], kind="stable")[:top]
            out[name] = [
                {
                    "expert": int(e),
                    "lift": float(self.lift[s, e]),
                    "null_p99": float(self.lift_null_p99[s, e]),
                    "p_value": float(self.lift_p_value[s, e]),
                    "p_adjusted": float(self.lift_p_adjusted[s, e]),
                    "beats_null": bool(self.lift_p_adjusted[s, e] <= alpha),
                }
                for e in order
                if self.lift[s, e] > 1.0
            ]
        return out


@dataclass(slots=True)
class Specialisation:
    sources: list[str]
    documents: int
    tokens: dict[str, int]
    permutations: int
    layers: list[LayerSpecialisation] = field(default_factory=list)
    seed: int = 0

    def to_dict(self, top: int = 5) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "documents": self.documents,
            "tokens_by_source": self.tokens,
            "permutations": self.permutations,
            "seed": self.seed,
            "null": "sources shuffled across documents",
            "marked": f"adjusted p-value <= {ALPHA}: max-T over every test of the study (the lifts; "
            "the layers' mutual information), so the chance of marking anything by chance is <= 1%",
            "layers": [
                {
                    "layer_index": layer.layer_index,
                    "mutual_information_bits": layer.mutual_information,
                    "mi_null_p99": layer.mi_null_p99,
                    "mi_p_value": layer.mi_p_value,
                    "mi_p_adjusted": layer.mi_p_adjusted,
                    "beats_null": layer.beats_null,
                    "leaning": layer.leaning(self.sources, top=top),
                }
                for layer in self.layers
            ],
        }


def document_counts(run: Path | str) -> tuple[list[int], DocumentCounts]:
    """The layer indices and the selection counts of one teacher-forced (or any v0.2) run."""
    reader = RunReader(run)
    if reader.profile != "v0.2" or reader.routing is None:
        raise SpecialiseError(
            f"{run}: a contract v0.2 run is needed (route a corpus with `inferoscope route`)"
        )
    sidecar = reader.sidecar()
    layers: list[int] = []
    blocks: list[np.ndarray] = []
    experts = max(group.num_experts for group in reader.routing.groups)
    for group in reader.routing.groups:
        selected = sidecar.whole(group, "selected")
        if selected is None:
            raise SpecialiseError(f"{run}: its selected experts cannot be read; run inferoscope validate")
        for slot, layer in enumerate(group.layers):
            counts = np.bincount(selected[:, slot].ravel().astype(np.int64), minlength=experts)[:experts]
            layers.append(layer)
            blocks.append(counts)
    order = np.argsort(layers)
    count = len(reader)
    source = reader.token_event(0).source if count else None
    if source is None:
        raise SpecialiseError(
            f"{run}: its tokens carry no source label (route with --source-field or --source)"
        )
    return [layers[i] for i in order], DocumentCounts(source, count, np.stack([blocks[i] for i in order]))


def runs_in(paths: Iterable[Path | str]) -> list[Path]:
    """Bundle folders: each path itself, or the bundles directly inside a run-set folder."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "manifest.json").exists():
            found.append(path)
        elif path.is_dir():
            found += sorted(child for child in path.iterdir() if (child / "manifest.json").exists())
        else:
            raise SpecialiseError(f"{path}: no such run or run set")
    if not found:
        raise SpecialiseError("no runs found")
    return found


def specialise(
    runs: Iterable[Path | str], *, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0
) -> Specialisation:
    paths = runs_in(runs)
    layer_indices: list[int] | None = None
    docs: list[DocumentCounts] = []
    for path in paths:
        layers, doc = document_counts(path)
        if layer_indices is None:
            layer_indices = layers
        elif layers != layer_indices or doc.counts.shape != docs[0].counts.shape:
            raise SpecialiseError(f"{path}: its MoE layers or experts differ from the first run's")
        docs.append(doc)
    assert layer_indices is not None
    sources = sorted({doc.source for doc in docs})
    if len(sources) < 2:
        raise SpecialiseError(f"only one source ({sources[0]!r}): specialisation needs two or more")
    source_of = np.array([sources.index(doc.source) for doc in docs])
    counts = np.stack([doc.counts for doc in docs]).astype(np.float64)  # [docs, layers, experts]
    observed = _statistics(counts, source_of, len(sources))
    rng = np.random.default_rng(seed)
    mi_null = np.zeros((permutations, len(layer_indices)))
    lift_null = np.zeros((permutations, *observed[1].shape))
    for p in range(permutations):
        mi_null[p], lift_null[p] = _statistics(counts, rng.permutation(source_of), len(sources))
    result = Specialisation(
        sources,
        len(docs),
        {s: sum(d.tokens for d in docs if d.source == s) for s in sources},
        permutations,
        seed=seed,
    )
    for li, layer in enumerate(layer_indices):
        mi, lift = observed[0][li], observed[1][li]
        result.layers.append(
            LayerSpecialisation(
                layer_index=layer,
                mutual_information=float(mi),
                mi_null_p99=float(np.quantile(mi_null[:, li], 0.99)),
                mi_p_value=float((1 + (mi_null[:, li] >= mi - 1e-12).sum()) / (1 + permutations)),
                lift=lift,
                lift_null_p99=np.quantile(lift_null[:, li], 0.99, axis=0),
                lift_p_value=(1 + (lift_null[:, li] >= lift[None] - 1e-12).sum(axis=0)) / (1 + permutations),
            )
        )
    lift_adjusted = max_t_adjusted(observed[1], lift_null)  # [layers, sources, experts]
    mi_adjusted = max_t_adjusted(observed[0], mi_null)  # [layers]
    for number, studied in enumerate(result.layers):
        studied.lift_p_adjusted = lift_adjusted[number]
        studied.mi_p_adjusted = float(mi_adjusted[number])
    return result


def max_t_adjusted(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Westfall-Young max-T adjusted p-values (one-sided, upper) of every test at once.

    ``null[p]`` holds every test's statistic under permutation ``p``. Each test is standardised by
    its null's mean and standard deviation (a test whose null never varies counts only where it
    is exceeded exactly as in the null); the adjusted p-value of a test is
    ``(1 + #permutations whose largest standardised statistic >= its own) / (1 + permutations)``.
    """
    mean, spread = null.mean(axis=0), null.std(axis=0)
    flat = spread > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(
            flat, (observed - mean) / np.where(flat, spread, 1.0), np.where(observed > mean, np.inf, 0.0)
        )
        z_null = np.where(flat, (null - mean) / np.where(flat, spread, 1.0), 0.0)
    largest = z_null.reshape(null.shape[0], -1).max(axis=1)  # [permutations]
    exceed = (largest[:, None] >= z.reshape(1, -1) - 1e-12).sum(axis=0)
    adjusted: np.ndarray = ((1 + exceed) / (1 + null.shape[0])).reshape(observed.shape)
    return adjusted


def _statistics(counts: np.ndarray, source_of: np.ndarray, sources: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: MI(source; expert) in bits ``[layers]`` and lift ``[layers, sources, experts]``."""
    one_hot = np.zeros((sources, counts.shape[0]))
    one_hot[source_of, np.arange(counts.shape[0])] = 1.0
    joint = np.einsum("sd,dle->lse", one_hot, counts)  # [layers, sources, experts] selections
    total = joint.sum(axis=(1, 2), keepdims=True)
    p = joint / np.where(total > 0, total, 1.0)
    ps, pe = p.sum(axis=2, keepdims=True), p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / (ps * pe)), 0.0)
        lift = np.where(pe > 0, (p / np.where(pe > 0, pe, 1.0)) / np.where(ps > 0, ps, 1.0), 0.0)
    return terms.sum(axis=(1, 2)), lift


def describe(result: Specialisation, top: int = 3) -> list[str]:
    """Plain lines for the terminal (the CLI draws a table from the same data)."""
    lines = [
        f"{result.documents} documents; tokens by source: "
        + ", ".join(f"{s} {n}" for s, n in result.tokens.items())
        + f"; null: sources shuffled across documents, {result.permutations} permutations "
        f"(seed {result.seed}); marked: adjusted p <= {ALPHA} (max-T over all the study's tests)"
    ]
    for layer in result.layers:
        verdict = "beats the null" if layer.beats_null else "within the null"
        lines.append(
            f"layer {layer.layer_index}: MI {layer.mutual_information:.4f} bits (null p99 "
            f"{layer.mi_null_p99:.4f}, p {layer.mi_p_value:.3f}, adjusted p {layer.mi_p_adjusted:.3f}: "
            f"{verdict})"
        )
        for source, experts in layer.leaning(result.sources, top=top).items():
            shown = ", ".join(
                f"e{x['expert']} x{x['lift']:.2f}{'' if x['beats_null'] else ' (null)'}" for x in experts
            )
            lines.append(f"  {source}: {shown or 'no expert leans to it'}")
    return lines


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
