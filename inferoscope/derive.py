"""Provisional motifs (contract §1: derived, separate from the raw trace, never trusted blindly).

Two matchers, named in ``derivation_config_id``:
- ``motifs/exact-fingerprint``: a motif is an exact router_probs vector (the baseline; on real
  runs nearly every token is its own motif).
- ``motifs/online-cosine-<threshold>``: per-run online clustering in token order. A routing
  fingerprint is the router_probs vector minus the uniform 1/n (its *preference*, so two
  near-uniform routers are not called alike just for being flat); similarity is the cosine of
  fingerprints, in [-1, 1]; a token joins the most similar motif when the similarity reaches the
  threshold (default 0.9, conservative), else founds a new one. Layer motifs use one layer's
  fingerprint, global motifs the concatenation over layers.

Each assignment carries ``fit`` (the similarity to the motif's centroid before the token joined;
1.0 for a token that founds a motif) and ``novel`` (it founded the motif). The ledger keeps counts,
each motif's founding token, centroids (mean router_probs) of motifs with two or more members and
the configuration; the contingency table maps token text to
global motifs and back. Writing replaces only derived.ndjson, motif_ledger.json, contingency.json
and the manifest's derivation_config_id (each file atomically); the raw trace is never touched.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.errors import RunBundleError
from .bundle.loader import ValidationBeside
from .bundle.pipe import can_fork_beside
from .bundle.reader import RunReader
from .bundle.swap import bundle_lock, exchange, staging_copy
from .bundle.writer import sweep_stale
from .derive_inputs import InputBlock, Irregular, NoDistribution, blocks_from_events, reader_blocks
from .derived_lines import LineMaker
from .json_stream import Streamed, materialised, sampled, write_json_file
from .jsonfmt import dumps_ndjson_line
from .motif_blocks import BlockClusters, BlockDecisions, ExactClusters, named
from .motif_helper import (
    GLOBAL,
    HELPER_SLOWDOWN,
    MatchHelper,
    SplitClock,
    fingerprints_of,
    split_clusterings,
)
from .versions import (
    CONTINGENCY_FILE,
    CONTINGENCY_SCHEMA_VERSION,
    DERIVED_EVENT_SCHEMA_VERSION,
    DERIVED_FILE,
    MANIFEST_FILE,
    MOTIF_LEDGER_FILE,
    MOTIF_LEDGER_SCHEMA_VERSION,
)

DEFAULT_THRESHOLD = 0.9
#: motifs in one clustering of the uncapped cosine matcher from which derive says once that the
#: run has little structure (a structured run has hundreds: the demo repeated to 50,000 tokens has
#: 89 global motifs) and that ``--cap`` bounds the cost, which grows with every motif
MANY_MOTIFS = 10_000


@dataclass(slots=True)
class _Clusters:
    """Online clustering of fingerprints in arrival order (deterministic).

    Fingerprint sums and probability sums live in row-major arrays that grow by doubling, so
    matching a token against every motif is one matrix-vector product, not a Python loop.
    """

    prefix: str
    threshold: float | None  # None: exact matching
    sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    prob_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    counts: list[int] = field(default_factory=list)
    founders: list[int] = field(default_factory=list)  # token_index that founded each motif
    exact: dict[bytes, int] = field(default_factory=dict)

    def assign(self, fingerprint: np.ndarray, probs: np.ndarray, token: int) -> tuple[str, float, bool]:
        """The motif of one token: (motif_id, fit, novel). Centroids average ``probs``."""
        if self.threshold is None:
            key = probs.tobytes()
            number = self.exact.get(key)
            if number is not None:
                self._join(number, fingerprint, probs)
                return self._name(number), 1.0, False
            self.exact[key] = len(self.counts)
            return self._found(fingerprint, probs, token), 1.0, True
        count = len(self.counts)
        if count and self.sums.shape[1] == fingerprint.size:
            norm = float(np.linalg.norm(fingerprint))
            centres = self.norms[:count]
            if norm > 0:
                with np.errstate(invalid="ignore", divide="ignore"):
                    similarity = (self.sums[:count] @ fingerprint) / (centres * norm)
                similarity = np.where(centres > 0, similarity, 0.0)
            else:  # a perfectly uniform router is only like another perfectly uniform one
                similarity = np.where(centres == 0, 1.0, 0.0)
            best = int(np.argmax(similarity))
            fit = float(similarity[best])
            if fit >= self.threshold:
                self._join(best, fingerprint, probs)
                return self._name(best), round(fit, 6), False
        return self._found(fingerprint, probs, token), 1.0, True

    def _join(self, number: int, fingerprint: np.ndarray, probs: np.ndarray) -> None:
        self.sums[number] += fingerprint
        self.prob_sums[number] += probs
        self.norms[number] = float(np.linalg.norm(self.sums[number]))
        self.counts[number] += 1

    def _found(self, fingerprint: np.ndarray, probs: np.ndarray, token: int) -> str:
        number = len(self.counts)
        self.founders.append(token)
        if number == self.sums.shape[0] or self.sums.shape[1] != fingerprint.size:
            capacity = max(16, 2 * number)
            self.sums = _grown(self.sums, capacity, fingerprint.size)
            self.prob_sums = _grown(self.prob_sums, capacity, probs.size)
            norms = np.zeros(capacity)
            norms[:number] = self.norms[:number]
            self.norms = norms
        self.sums[number] = fingerprint
        self.prob_sums[number] = probs
        self.norms[number] = float(np.linalg.norm(fingerprint))
        self.counts.append(1)
        return self._name(number)

    def _name(self, number: int) -> str:
        return f"{self.prefix}{number:03d}"

    def ledger(self) -> tuple[dict[str, int], dict[str, list[float]], dict[str, int]]:
        """Counts, centroids of motifs with two or more members, and every motif's founding token.

        A one-member motif's centroid is its founder's router_probs, already in the raw trace;
        writing it again would make a structureless run's ledger as large as the trace itself.
        """
        return named(self.prefix, self.ledger_parts())

    def ledger_parts(self) -> tuple[Sequence[int], dict[int, list[float]], Sequence[int]]:
        shared = [i for i, c in enumerate(self.counts) if c > 1]
        sizes = np.asarray([self.counts[i] for i in shared], dtype=np.float64)
        means = np.round(self.prob_sums[shared] / sizes[:, None], 8) if shared else np.zeros((0, 0))
        return list(self.counts), dict(zip(shared, means.tolist(), strict=True)), list(self.founders)


def _grown(array: np.ndarray, rows: int, width: int) -> np.ndarray:
    grown = np.zeros((rows, width))
    if array.size and array.shape[1] == width:
        grown[: array.shape[0]] = array
    return grown


def matcher_id(threshold: float | None, cap: int | None = None) -> str:
    """The matcher's name, written as derivation_config_id and the ledger's matching_rule."""
    if threshold is None:
        return "motifs/exact-fingerprint"
    name = f"motifs/online-cosine-{threshold:.2f}"
    return name if cap is None else f"{name}-cap{cap}"


def derive_bundle_artifacts(bundle: dict[str, Any], threshold: float | None = None) -> dict[str, Any]:
    """``derived_events``, ``motif_ledger`` and ``contingency`` of a loaded bundle (the original API).

    As the original library's first pass, motifs are exact fingerprints unless a cosine
    ``threshold`` is given, and the artifacts carry the manifest's own derivation_version and
    derivation_config_id, so they can be written beside the unchanged manifest. (``inferoscope
    derive`` instead names the matcher in derivation_config_id and updates the manifest.)
    """
    manifest = bundle["manifest"]
    derived, ledger, contingency = derive_events(
        manifest, bundle["raw_events"], threshold, config_id=manifest["derivation_config_id"]
    )
    return {"derived_events": derived, "motif_ledger": ledger, "contingency": contingency}


def derive_events(
    manifest: dict[str, Any],
    raw_events: Iterable[dict[str, Any]],
    threshold: float | None = DEFAULT_THRESHOLD,
    *,
    config_id: str | None = None,
    cap: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(derived_events, motif_ledger, contingency) of loaded raw events.

    ``config_id`` stamps the artifacts (default: the matcher's id); the ledger's
    ``matching_rule`` always names the matcher.
    """
    events = raw_events if isinstance(raw_events, (list, tuple)) else list(raw_events)
    try:
        derivation = Derivation(manifest, threshold, cap=cap, config_id=config_id)
        lines: list[str] = list(derivation.texts(blocks_from_events(events)))
    except Irregular:
        derivation = Derivation(manifest, threshold, cap=cap, config_id=config_id, one_by_one=True)
        lines = [derivation.event_line(event) for event in events]
    derived = [json.loads(line) for text in lines for line in text.splitlines()]
    ledger, contingency = derivation.artifacts()
    return derived, materialised(ledger), materialised(contingency)


class Derivation:
    """Motifs of one run, fed a block of tokens (or, for an irregular run, a token) at a time;
    each call returns the derived events' NDJSON text, so nothing holds the whole run."""

    def __init__(
        self,
        manifest: dict[str, Any],
        threshold: float | None,
        *,
        cap: int | None = None,
        config_id: str | None = None,
        one_by_one: bool = False,
        audit: bool = False,
        parallel: bool = False,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        if cap is not None and (threshold is None or cap < 1):
            raise ValueError("a cap applies to the cosine matcher, and must be at least 1")
        self.rule = matcher_id(threshold, cap)
        self.threshold, self.cap, self.audit = threshold, cap, audit
        self.run_id, self.version = manifest["run_id"], manifest["derivation_version"]
        self.config_id = config_id if config_id is not None else self.rule
        self.one_by_one = one_by_one
        self.parallel = parallel and not one_by_one
        self.helper: MatchHelper | None = None
        self.layer_order: list[int] | None = None
        self.global_clusters: Any = self._clusters("g_")
        self.layer_clusters: dict[int, Any] = {}
        self.remote: dict[Any, tuple[Any, ...]] = {}  # the helper's ledgers, once it finished
        self.motifs = (0, 0)  # global and layer motifs, once artifacts() has run
        self.tokens = 0
        self.fits: list[np.ndarray] = []  # global fits, a block at a time (for the mean)
        # the contingency, compactly: each distinct text once, then a (text, global motif) pair
        # per token; counted and ordered only when written
        self.text_ids: dict[str, int] = {}
        self.pairs: list[np.ndarray] = []
        self.pending: tuple[InputBlock, list[int], dict[Any, BlockDecisions]] | None = None
        self.line_maker: LineMaker | None = None
        self.clock = SplitClock()
        # said once, where the uncapped cosine matcher meets a run with little structure
        self.notice = notice if threshold is not None and cap is None else None
        self._head = (
            '{"derivation_config_id": '
            + json.dumps(self.config_id)
            + ', "derivation_version": '
            + json.dumps(self.version)
            + ', "derived_payload": {"global_motif": '
        )
        self._tail = (
            ', "event_type": "token_derived", "run_id": '
            + json.dumps(self.run_id)
            + ', "schema_version": '
            + json.dumps(DERIVED_EVENT_SCHEMA_VERSION)
            + ', "token_index": '
        )

    def _clusters(self, prefix: str) -> Any:
        if self.one_by_one:
            return _Clusters(prefix, self.threshold)
        if self.threshold is None:
            return ExactClusters()
        return BlockClusters(self.threshold, self.cap, self.audit)

    def _make(self, key: Any) -> Any:
        """A clustering of one layer (its index) or of the global fingerprint (GLOBAL)."""
        return self._clusters("g_" if key == GLOBAL else f"l{key:02d}_")

    def finish(self) -> None:
        """Every token is matched: collect the helper's ledgers and let it end."""
        self._collect()
        if self.helper is not None:
            self.remote = self.helper.finish()
            self.helper = None

    def close(self) -> None:
        """Stop the helper process, if any (after an error; ``finish`` ends it otherwise)."""
        if self.helper is not None:
            self.helper.close()
            self.helper = None

    def lines(self, block: InputBlock) -> str:
        """Match one block of tokens; the derived events' lines of the block before it (``flush``
        gives the last).

        The first ``MEASURED_BLOCKS`` blocks are matched here (all but the first timed); then a
        forked helper takes over the clusterings that balance the two processes
        (``split_clusterings``: it inherits their state as it stands). From then on the helper's
        decisions for the block before are collected first and this block sent at once, so the
        helper matches it while this process matches its own clusterings, writes the lines of the
        block before and reads the next block: the helper waits only where this process is the
        busier side."""
        indices = list(block.layers)
        if self.layer_order is None:
            self.layer_order = indices
        elif self.layer_order != indices:
            raise Irregular
        self.clock.block_starts()
        if self.clock.measured and self.parallel and can_fork_beside():
            keys = split_clusterings(self.clock.costs, self.clock.fixed, HELPER_SLOWDOWN)
            if keys:
                self.helper = MatchHelper(self._existing, keys)
                for key in keys:  # the helper's now: this process's copies are never read again
                    if key == GLOBAL:
                        self.global_clusters = None
                    else:
                        del self.layer_clusters[key]
        vectors = [block.layers[index] for index in indices]
        remote = set(self.helper.keys) if self.helper is not None else set()
        if self.helper is not None:
            self._collect()
            self.helper.send(block.tokens, {k: vectors if k == GLOBAL else block.layers[k] for k in remote})
        decided: dict[Any, BlockDecisions] = {}
        for index, probs in zip(indices, vectors, strict=True):
            if index not in remote:
                clusters = self.layer_clusters.get(index)
                if clusters is None:
                    clusters = self.layer_clusters[index] = self._make(index)
                with self.clock.timing(index):
                    decided[index] = clusters.assign(*fingerprints_of(index, probs), block.tokens)
        if GLOBAL not in remote:
            with self.clock.timing(GLOBAL):
                decided[GLOBAL] = self.global_clusters.assign(*fingerprints_of(GLOBAL, vectors), block.tokens)
        text = self.flush()  # the block before, while the helper matches this one
        self.pending = (block, indices, decided)
        return text

    def _existing(self, key: Any) -> Any:
        """The clustering ``key`` as it stands (what a helper forked now carries on with)."""
        return self.global_clusters if key == GLOBAL else self.layer_clusters[key]

    def _collect(self) -> None:
        """The helper's decisions for the pending block, where they are still to come (they
        complete its decisions; a block matched before the helper existed has them all)."""
        helper, pending = self.helper, self.pending
        if helper is not None and pending is not None and helper.keys[0] not in pending[2]:
            pending[2].update(helper.receive())

    def texts(self, blocks: Iterable[InputBlock]) -> Iterator[str]:
        """The derived lines of ``blocks``, a text a block (the last block's once all are matched)."""
        for block in blocks:
            yield self.lines(block)
        yield self.flush()

    def flush(self) -> str:
        """The lines of the block matched last and not yet given (empty if none)."""
        self._collect()
        if self.pending is None:
            return ""
        block, indices, decided = self.pending
        self.pending = None
        glob = decided[GLOBAL]
        ids = self.text_ids
        texts = [ids.setdefault(text, len(ids)) for text in block.texts]
        self.pairs.append(
            np.stack([np.asarray(texts, dtype=np.int64), glob.numbers.astype(np.int64)], axis=1)
        )
        every = [glob, *(decided[index] for index in indices)]
        fits = [_fit_values(d) for d in every]
        self.tokens += block.tokens.size
        self._tell_if_many(every, indices)
        self.fits.append(fits[0])
        if self.line_maker is None:  # a run's layers never change (else it is Irregular)
            self.line_maker = LineMaker(self._head, self._tail, indices)
        made = self.line_maker.lines(block.tokens, [d.numbers for d in every], fits, [d.novel for d in every])
        if made is not None:
            return made.decode("ascii")
        return self._one_by_one(block, indices, every, [f.tolist() for f in fits])

    def _tell_if_many(self, every: list[BlockDecisions], indices: list[int]) -> None:
        """Say once that a clustering reached ``MANY_MOTIFS``: matching the rest of the run costs
        more with every motif, and a capped matcher bounds it."""
        if self.notice is None:
            return
        counts = [int(d.numbers.max()) + 1 if d.numbers.size else 0 for d in every]
        most = max(counts)
        if most < MANY_MOTIFS:
            return
        where = ["the global fingerprint", *(f"layer {index}" for index in indices)][counts.index(most)]
        notice, self.notice = self.notice, None
        with contextlib.suppress(OSError):  # a stderr full or closed loses the notice, not the run
            notice(
                f"derive: {most:,} motifs in {where} after {self.tokens:,} tokens: this run repeats "
                "little of its routing, and the uncapped matcher compares each token with every "
                "motif, so it slows as they grow; --cap 1024 bounds the cost (an approximate "
                "matcher, named in derivation_config_id)"
            )

    def _one_by_one(
        self, block: InputBlock, indices: list[int], every: list[BlockDecisions], fits: list[list[float]]
    ) -> str:
        """A block's lines a token at a time (where ``LineMaker`` does not write the fits)."""
        glob = every[0]
        layer_parts = [
            (
                [
                    f'{{"fit": {fit!r}, "layer_index": {index}, "motif_id": "l{index:02d}_{n:03d}", "novel": '
                    for n, fit in zip(d.numbers.tolist(), layer_fits, strict=True)
                ],
                [_BOOL[v] for v in d.novel.tolist()],
            )
            for index, d, layer_fits in zip(indices, every[1:], fits[1:], strict=True)
        ]
        out = []
        for j, (number, novel, token) in enumerate(
            zip(glob.numbers.tolist(), glob.novel.tolist(), block.tokens.tolist(), strict=True)
        ):
            layers = ", ".join(heads[j] + bools[j] for heads, bools in layer_parts)
            motif = f'{{"fit": {fits[0][j]!r}, "motif_id": "g_{number:03d}", "novel": {_BOOL[novel]}'
            out.append(f'{self._head}{motif}, "layer_motifs": [{layers}]}}{self._tail}{token}}}\n')
        return "".join(out)

    def event_line(self, event: dict[str, Any]) -> str:
        """One token of an irregular run (its layers differ from other tokens'), matched alone."""
        layers = sorted(event["layers"], key=lambda la: la["layer_index"])
        vectors = [np.asarray(la["router_probs"], dtype=np.float64) for la in layers]
        layer_motifs = []
        for layer, probs in zip(layers, vectors, strict=True):
            index = layer["layer_index"]
            clusters = self.layer_clusters.setdefault(index, _Clusters(f"l{index:02d}_", self.threshold))
            motif, fit, novel = clusters.assign(probs - 1.0 / probs.size, probs, event["token_index"])
            layer_motifs.append({"layer_index": index, "motif_id": motif, "fit": fit, "novel": novel})
        fingerprint = np.concatenate([v - 1.0 / v.size for v in vectors])
        motif, fit, novel = self.global_clusters.assign(
            fingerprint, np.concatenate(vectors), event["token_index"]
        )
        text = event["token_text"]
        number = int(motif.removeprefix("g_"))
        self.pairs.append(
            np.array([[self.text_ids.setdefault(text, len(self.text_ids)), number]], dtype=np.int64)
        )
        self.tokens += 1
        self.fits.append(np.array([fit], dtype=np.float64))
        return dumps_ndjson_line(
            {
                "event_type": "token_derived",
                "schema_version": DERIVED_EVENT_SCHEMA_VERSION,
                "run_id": self.run_id,
                "token_index": event["token_index"],
                "derivation_version": self.version,
                "derivation_config_id": self.config_id,
                "derived_payload": {
                    "global_motif": {"motif_id": motif, "fit": fit, "novel": novel},
                    "layer_motifs": layer_motifs,
                },
            }
        )

    def mean_fit(self) -> float | None:
        """Mean global fit over every token (None for an empty run)."""
        return float(np.mean(np.concatenate(self.fits))) if self.fits else None

    def _parts_of(self, key: Any) -> tuple[Sequence[int], dict[int, list[float]], Sequence[int]]:
        if key in self.remote:
            return self.remote[key][0]  # type: ignore[no-any-return]
        clusters = self.global_clusters if key == GLOBAL else self.layer_clusters[key]
        return clusters.ledger_parts()  # type: ignore[no-any-return]

    def artifacts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(motif_ledger, contingency) once every token is matched. Their largest members (one
        entry a motif, or a text) are ``Streamed``: produced in key order as they are written."""
        self.finish()
        keys = [GLOBAL, *sorted({*self.layer_clusters, *(k for k in self.remote if k != GLOBAL)})]
        parts = {key: self._parts_of(key) for key in keys}
        prefixes = {key: "g_" if key == GLOBAL else f"l{key:02d}_" for key in keys}
        layers = keys[1:]
        self.motifs = (len(parts[GLOBAL][0]), sum(len(parts[k][0]) for k in layers))

        def by_motif(which: int, chosen: list[Any]) -> Streamed:
            """Counts (0) or founders (2) of the chosen clusterings, merged in key order."""
            return Streamed(
                lambda: heapq.merge(
                    *(_named_entries(prefixes[k], parts[k][which]) for k in chosen),  # type: ignore[arg-type]
                    key=itemgetter(0),
                )
            )

        def centroids(chosen: list[Any]) -> dict[str, list[float]]:
            return {f"{prefixes[k]}{n:03d}": row for k in chosen for n, row in parts[k][1].items()}

        threshold = self.threshold
        similarity = None if threshold is None else "cosine of router_probs minus uniform"
        if self.cap is not None:
            similarity = (
                f"{similarity}; candidates: the {self.cap} motifs with the most members when each "
                "block of 128 tokens began, and those founded within the block"
            )
        ledger = {
            "schema_version": MOTIF_LEDGER_SCHEMA_VERSION,
            "run_id": self.run_id,
            "derivation_version": self.version,
            "derivation_config_id": self.config_id,
            "ledger_payload": {
                "matching_rule": self.rule,
                "threshold": threshold,
                "similarity": similarity,
                "tokens": self.tokens,
                "global_motif_counts": by_motif(0, [GLOBAL]),
                "layer_motif_counts": by_motif(0, layers),
                "centroids": "mean router_probs of a motif's members, for motifs with two or more; a "
                "one-member motif's centroid is its founding token's router_probs in raw_trace.ndjson",
                "global_centroids": centroids([GLOBAL]),
                "layer_centroids": centroids(layers),
                "global_founders": by_motif(2, [GLOBAL]),
                "layer_founders": by_motif(2, layers),
            },
        }
        text_to_motifs, motif_to_texts = _contingency(self.text_ids, self.pairs, self.motifs[0])
        contingency = {
            "schema_version": CONTINGENCY_SCHEMA_VERSION,
            "run_id": self.run_id,
            "derivation_version": self.version,
            "derivation_config_id": self.config_id,
            "contingency_payload": {
                "token_text_to_global_motifs": text_to_motifs,
                "global_motif_to_token_texts": motif_to_texts,
            },
        }
        return ledger, contingency


def _named_entries(prefix: str, values: Sequence[int]) -> Iterator[tuple[str, int]]:
    """(motif id, value) of every motif number, in the order of the ids as strings (``g_1000``
    comes between ``g_100`` and ``g_101``), as a JSON object with sorted keys has them."""
    if not len(values):
        return
    digits = np.array([f"{n:03d}" for n in range(len(values))], dtype=bytes)
    for n in np.argsort(digits, kind="stable").tolist():
        yield f"{prefix}{n:03d}", int(values[n])


def _contingency(text_ids: dict[str, int], pairs: list[np.ndarray], motifs: int) -> tuple[Streamed, Streamed]:
    """token text -> its global motifs, and global motif -> {token text: count}, streamed in key
    order from the (text, motif) pair of every token."""
    texts = list(text_ids)
    stacked = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    keyed = stacked[:, 0] * max(motifs, 1) + stacked[:, 1]
    distinct, counts = np.unique(keyed, return_counts=True)
    text_of, motif_of = distinct // max(motifs, 1), distinct % max(motifs, 1)
    text_rank = np.empty(len(texts), dtype=np.int64)
    text_rank[sorted(range(len(texts)), key=texts.__getitem__)] = np.arange(len(texts))
    digits = (
        np.array([f"{n:03d}" for n in range(motifs)], dtype=bytes) if motifs else np.zeros(0, dtype=bytes)
    )
    motif_rank = np.empty(motifs, dtype=np.int64)
    motif_rank[np.argsort(digits, kind="stable")] = np.arange(motifs)
    by_text = np.lexsort((motif_rank[motif_of], text_rank[text_of]))
    by_motif = np.lexsort((text_rank[text_of], motif_rank[motif_of]))

    def text_entries() -> Iterator[tuple[str, Any]]:
        rows = text_of[by_text].tolist()
        names = motif_of[by_text].tolist()
        for text, group in itertools.groupby(zip(rows, names, strict=True), key=itemgetter(0)):
            yield texts[text], [f"g_{m:03d}" for _t, m in group]

    def motif_entries() -> Iterator[tuple[str, Any]]:
        rows = motif_of[by_motif].tolist()
        sources = text_of[by_motif].tolist()
        tallies = counts[by_motif].tolist()
        for motif, group in itertools.groupby(zip(rows, sources, tallies, strict=True), key=itemgetter(0)):
            yield f"g_{motif:03d}", {texts[t]: c for _m, t, c in group}

    return Streamed(text_entries), Streamed(motif_entries)


_BOOL = {True: "true}", False: "false}"}


def _fit_values(decisions: BlockDecisions) -> np.ndarray:
    """Fits as written: 1.0 for a founder, else rounded to six decimals as Python's ``round``
    does. A fit lies in [-1, 1], so ``x * 1e6`` is within 1.2e-10 of the exact product: rounding
    it to an integer picks Python's digits unless it lies near a half, and the integer over 1e6
    is then the float ``round`` returns; the few near a half are rounded by ``round`` itself.
    Either way each is the float nearest to some ``k / 10**6`` (what ``LineMaker`` writes)."""
    fits = decisions.fits
    scaled = fits * 1e6
    whole = np.rint(scaled)
    rounded: np.ndarray = np.where(decisions.novel, 1.0, whole / 1e6)
    near_half = np.abs(np.abs(scaled - whole) - 0.5) < 1e-6
    for i in np.flatnonzero(near_half & ~decisions.novel).tolist():
        rounded[i] = round(float(fits[i]), 6)
    return rounded


class DeriveError(ValueError):
    """The run cannot be derived (one line saying why)."""


def derive_inputs(reader: RunReader) -> Iterator[dict[str, Any]]:
    """Each event as derive reads it: token index and text, and per layer a distribution over
    experts. Contract v0.1.0: ``router_probs`` as stored. v0.2: the scores as a distribution by
    their function's definition (softmax: the scores; sigmoid: divided by their sum; logits:
    their softmax); a run without scores has nothing to derive motifs from."""
    if reader.profile != "v0.2":
        yield from (reader.event(i) for i in range(len(reader)))
        return
    for i in range(len(reader)):
        token = reader.token_event(i)
        layers = []
        for layer in token.layers:
            distribution = layer.distribution()
            if distribution is None:
                raise DeriveError(
                    f"token {i}, layer {layer.layer_index}: no scores recorded "
                    f"({layer.score_function}); motifs are derived from the score distribution"
                )
            layers.append({"layer_index": layer.layer_index, "router_probs": distribution})
        yield {"token_index": token.token_index, "token_text": token.token_text or "", "layers": layers}


def write_derived(
    run_dir: Path | str,
    threshold: float | None = DEFAULT_THRESHOLD,
    *,
    cap: int | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Derive and write the three provisional artifacts into a bundle; returns a summary.

    The four files that change (the three artifacts and the manifest's derivation_config_id)
    change as one step: the new bundle is built beside the old one (other files hard-linked), the
    derived events streamed into it a block at a time, and it is exchanged with the old one. A
    lock keeps two derives of one bundle apart (the second gets BundleBusyError). Only the
    manifest, raw trace and layout must be valid before, so a half-derived bundle is repaired;
    the raw trace and layout are never touched (the new bundle holds the same files, validated
    under the same lock). ``notice`` hears what a user should know while it runs (a run whose
    motifs keep growing under the uncapped matcher).
    """
    folder = Path(run_dir)
    for name in (DERIVED_FILE, MOTIF_LEDGER_FILE, CONTINGENCY_FILE, MANIFEST_FILE):
        sweep_stale(folder, f".{name}.derive-")  # left by earlier versions' killed derives
    with bundle_lock(folder):
        # checked beside the derivation (a forked process): nothing is exchanged before it passes
        check = ValidationBeside(folder, derived=False)
        staging: Path | None = None
        try:
            reader = RunReader(folder)
            source = reader.manifest or {}
            staging = staging_copy(
                folder, leave_out={DERIVED_FILE, MOTIF_LEDGER_FILE, CONTINGENCY_FILE, MANIFEST_FILE}
            )
            derivation, first = _stream_derived(
                reader, source, threshold, cap, staging / DERIVED_FILE, notice
            )
            ledger, contingency = derivation.artifacts()
            manifest = dict(source, derivation_config_id=ledger["derivation_config_id"])
            check.wait()
            from .validation.in_memory import validate_run_bundle_schema_issues

            # what is new, before it can replace anything: the manifest whole; the ledger and
            # contingency with the first entries of each of their per-motif and per-text maps,
            # and the first block's derived events (every entry is written by the same code)
            new_parts = validate_run_bundle_schema_issues(
                manifest, [], reader.layout, first, sampled(ledger), sampled(contingency)
            )
            issues = [i for i in new_parts if i.severity == "error"]
            if issues:
                raise RunBundleError("refusing to write derived artifacts", issues)
            for name, obj in (
                (MOTIF_LEDGER_FILE, ledger),
                (CONTINGENCY_FILE, contingency),
                (MANIFEST_FILE, manifest),
            ):
                _write_streamed(staging / name, obj)
            exchange(staging, folder)
        except BaseException as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if not isinstance(exc, Exception):  # Ctrl-C: stop the check too
                check.cancel()
                raise
            check.wait()  # a bundle that is not clean: its issues, not where derive stumbled
            raise
    return {
        "matcher": ledger["derivation_config_id"],
        "tokens": derivation.tokens,
        "global_motifs": derivation.motifs[0],
        "layer_motifs": derivation.motifs[1],
        "mean_global_fit": derivation.mean_fit(),
    }


def _stream_derived(
    reader: RunReader,
    manifest: dict[str, Any],
    threshold: float | None,
    cap: int | None,
    path: Path,
    notice: Callable[[str], None] | None = None,
) -> tuple[Derivation, list[dict[str, Any]]]:
    """Write the derived events to ``path`` as they are matched; (the derivation, the first
    block's events parsed back for checking)."""
    from threadpoolctl import threadpool_limits

    # one BLAS thread per process: the helper and the decoders already fill the cores, and
    # BLAS threads spinning beside them made derive 2.8x slower (benchmarks/bench_derive.py)
    with path.open("wb") as handle, threadpool_limits(limits=1, user_api="blas"):
        derivation = Derivation(manifest, threshold, cap=cap, parallel=True, notice=notice)
        first: list[dict[str, Any]] = []
        try:
            for text in derivation.texts(reader_blocks(reader)):
                if not first:
                    first = [json.loads(line) for line in text.splitlines()]
                handle.write(text.encode("ascii"))
            derivation.finish()
        except NoDistribution as exc:
            raise DeriveError(str(exc)) from None
        except Irregular:  # tokens differ in their layers: matched one token at a time
            derivation.close()
            handle.seek(0)
            handle.truncate()
            derivation = Derivation(manifest, threshold, cap=cap, one_by_one=True)
            first = []
            for event in derive_inputs(reader):
                line = derivation.event_line(event)
                if len(first) < 256:
                    first.append(json.loads(line))
                handle.write(line.encode("ascii"))
        finally:  # an error, Ctrl-C, a full disk: no helper process outlives derive
            derivation.close()
        handle.flush()
        os.fsync(handle.fileno())
    return derivation, first


def _write_streamed(path: Path, obj: Any) -> None:
    """A JSON file in the contract's bytes, its Streamed members written as they are made."""
    with path.open("w", encoding="ascii", newline="\n") as handle:
        pieces: list[str] = []

        def write(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) >= 4096:
                handle.write("".join(pieces))
                pieces.clear()

        write_json_file(obj, write)
        handle.write("".join(pieces))
        handle.flush()
        os.fsync(handle.fileno())
