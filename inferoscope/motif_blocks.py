"""Online cosine clustering a block of tokens at a time: the motifs of the one-token-at-a-time rule.

The rule is sequential: a token joins the motif most similar to it as the motifs stand after
every earlier token, or founds a new one. Read naively that is one matrix-vector product per
token over every centroid: memory-bound, and quadratic on a run without structure. Here a block
of tokens (``derive_inputs.BLOCK_TOKENS``) is matched with matrix products:

1. ``static``: every token of the block against every candidate motif as it stood when the block
   began (one matrix product).
2. A guess of every token's decision fixes which motifs the block changes. The exact similarity
   of each token to each changed or newly founded motif follows from the Gram matrix of the
   block's fingerprints (a motif's sum grows by the fingerprints that joined it, so its dot
   product with a later token and its squared norm grow by known terms). Decisions are taken
   again from these exact rows; every token up to and including the first whose decision differs
   from the guess is settled (its row depended only on settled tokens), and the rest is guessed
   again from the new decisions. On a run with structure one or two rounds settle a block.
3. Sums, probability sums and counts are updated in token order (``np.add.at`` adds in order),
   so the sums at every block boundary are bit for bit those of the sequential rule. Similarities
   may differ from it in the last bits of a float64, far below the six decimals of a written fit.

``cap``: the approximate matcher. Only the ``cap`` motifs with the most members when a block
begins (ties: the older) and the motifs founded within the block are candidates, so a token costs
``O(cap)`` however many motifs a structureless run founds. A motif that falls out of the
candidates can never return (the motifs ranked above it only grow), so its sums are dropped and
memory stays ``O(cap)`` too. It is named in derivation_config_id (``-cap<N>``);
``benchmarks/bench_derive.py`` measures its recall against a search of every motif.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class BlockDecisions:
    """Per token of a block: motif number, fit (similarity before joining; 1.0 when founding),
    and whether the token founded its motif."""

    numbers: np.ndarray
    fits: np.ndarray
    novel: np.ndarray


@dataclass(slots=True)
class BlockClusters:
    """The motifs of one clustering (one layer's fingerprint, or the global one)."""

    threshold: float
    cap: int | None = None
    audit: bool = False  # cap only: also search every motif, to measure recall
    width: int = -1
    rows: int = 0  # live rows in use
    sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    prob_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    live: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # number per row
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # per number
    founders: array[int] = field(default_factory=lambda: array("q"))  # per number, 8 bytes each
    dropped: dict[int, np.ndarray] = field(default_factory=dict)  # prob sums of dropped motifs > 1
    rounds: int = 0
    audited: int = 0
    agreed: int = 0

    @property
    def size(self) -> int:
        return len(self.founders)

    def assign(self, fingerprints: np.ndarray, probs: np.ndarray, tokens: np.ndarray) -> BlockDecisions:
        """Decide every token of one block (``fingerprints`` ``[B, D]``, ``probs`` ``[B, P]``,
        ``tokens`` the token_index of each, in order)."""
        count = fingerprints.shape[0]
        self._ready(fingerprints, probs)
        candidates = self._candidates()
        fnorm = np.sqrt(np.einsum("ij,ij->i", fingerprints, fingerprints))
        every = candidates.size == self.rows  # then the candidates are the rows in order: slices
        sums = self.sums[: self.rows] if every else self.sums[candidates]
        norms = self.norms[: self.rows] if every else self.norms[candidates]
        base_dots = fingerprints @ sums.T
        static = _similarity(base_dots, np.broadcast_to(norms, base_dots.shape), fnorm)
        gram = np.dot(fingerprints, fingerprints.T)  # syrk: half the time of the same product by matmul
        lower = np.where(_strictly_lower(count), gram, 0.0)
        width = candidates.size
        positions = np.arange(count)
        joined = self._all_join(static, base_dots, candidates, gram, lower, fnorm) if width else None
        if joined is not None:  # the usual block of a run with structure, settled in one round
            self.rounds += 1
            assigned, fits = joined
            if self.audit and self.cap is not None:
                self._audit(candidates, fingerprints, fnorm, assigned, fits)
            return self._commit_joined(candidates[assigned], fits, fingerprints, probs)
        assigned = _decide(static_rows(static, count), self.threshold, width)
        fits = np.ones(count)
        settled = 0
        guess = assigned.copy()
        while settled < count:
            self.rounds += 1
            assigned[settled:] = guess[settled:]
            rows = self._exact_rows(static, base_dots, candidates, lower, gram, fnorm, assigned)
            decided = _decide(rows, self.threshold, width)
            differ = np.nonzero(decided[settled:] != guess[settled:])[0]
            stop = count if differ.size == 0 else settled + int(differ[0]) + 1
            assigned[settled:stop] = decided[settled:stop]
            fits[settled:stop] = rows[positions[settled:stop], decided[settled:stop]]
            guess = decided
            settled = stop
        if self.audit and self.cap is not None:
            self._audit(candidates, fingerprints, fnorm, assigned, fits)
        return self._commit(candidates, assigned, fits, fingerprints, probs, tokens)

    def _all_join(
        self,
        static: np.ndarray,
        base_dots: np.ndarray,
        candidates: np.ndarray,
        gram: np.ndarray,
        lower: np.ndarray,
        fnorm: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The first round of ``assign`` where every token's guess joins a candidate, on arrays
        of the candidates alone: the guess is the best candidate at the block's start; the
        rows are the static similarities with each joined motif's column made exact (a founded
        column would be ``-inf`` here, so it cannot change a decision). Returns the decisions and
        fits when every decision stands (the general loop would stop after this round with the
        same numbers), else None, and the general loop decides the block."""
        count = static.shape[0]
        positions = np.arange(count)
        best = np.argmax(static, axis=1)
        if static[positions, best].min() < self.threshold:
            return None  # a token founds a motif: the general loop
        touched, member = _touched(best, candidates.size)
        # the touched motifs' arrays are kept [motif, token]: the running sums then run along rows
        onehot = np.zeros((touched.size, count))
        onehot[member, positions] = 1.0
        dots = onehot @ lower.T
        dots += base_dots[:, touched].T
        base_sq = self.norms[candidates[touched]] ** 2
        own = dots[member, positions]
        increments = onehot * (2.0 * own + np.diagonal(gram))[None, :]
        before = np.cumsum(increments, axis=1) - increments
        norm = np.sqrt(np.maximum(base_sq[:, None] + before, 0.0))
        rows = static.copy()
        rows[:, touched] = _similarity(dots.T, norm.T, fnorm)
        decided = np.argmax(rows, axis=1)
        fits = rows[positions, decided]
        if not np.array_equal(decided, best) or fits.min() < self.threshold:
            return None
        return best, fits

    def _ready(self, fingerprints: np.ndarray, probs: np.ndarray) -> None:
        """Sized by the first block; a later block of another width is refused."""
        if self.width < 0:
            self.width = fingerprints.shape[1]
            self.sums = np.zeros((16, self.width))
            self.prob_sums = np.zeros((16, probs.shape[1]))
            self.norms = np.zeros(16)
            self.live = np.zeros(16, dtype=np.int64)
        elif fingerprints.shape[1] != self.width:
            raise ValueError("fingerprint width changed within a run")

    def _candidates(self) -> np.ndarray:
        """Live rows that are candidates for this block (all of them for the exact matcher)."""
        rows = np.arange(self.rows)
        if self.cap is None or self.rows <= self.cap:
            return rows
        numbers = self.live[: self.rows]
        order = np.lexsort((numbers, -self.counts[numbers]))[: self.cap]
        keep = np.sort(order)
        if not self.audit:  # the others can never be candidates again: drop them
            gone = np.setdiff1d(rows, keep)
            for row in gone[self.counts[self.live[gone]] > 1].tolist():
                self.dropped[int(self.live[row])] = self.prob_sums[row].copy()
            self.sums[: keep.size] = self.sums[keep]
            self.prob_sums[: keep.size] = self.prob_sums[keep]
            self.norms[: keep.size] = self.norms[keep]
            self.live[: keep.size] = self.live[keep]
            self.rows = keep.size
            return np.arange(keep.size)
        return keep

    def _exact_rows(
        self,
        static: np.ndarray,
        base_dots: np.ndarray,
        candidates: np.ndarray,
        lower: np.ndarray,
        gram: np.ndarray,
        fnorm: np.ndarray,
        assigned: np.ndarray,
    ) -> np.ndarray:
        """Each token's similarity to the candidates and to the motifs the block founds (column
        ``width + p``: founded by the token at position p), given the decisions ``assigned``."""
        count, width = static.shape
        positions = np.arange(count)
        touched, member = _touched(assigned, width + count)
        onehot = np.zeros((count, touched.size))
        onehot[positions, member] = 1.0
        dots = lower @ onehot  # [j, u]: G[j, i] summed over earlier members i of u
        old = touched < width
        dots[:, old] += base_dots[:, touched[old]]
        base_sq = np.zeros(touched.size)
        base_sq[old] = self.norms[candidates[touched[old]]] ** 2
        own = dots[positions, member]  # each token's dot with its motif before it joins
        increments = onehot * (2.0 * own + np.diagonal(gram))[:, None]
        before = np.cumsum(increments, axis=0) - increments
        norm = np.sqrt(np.maximum(base_sq[None, :] + before, 0.0))
        exact = _similarity(dots, norm, fnorm)
        # a founded column exists for the tokens after its founder, if that token does found it
        founder = touched - width
        new = ~old
        founds = np.zeros(touched.size, dtype=bool)
        founds[new] = assigned[founder[new]] == touched[new]
        exists = old[None, :] | (founds[None, :] & (positions[:, None] > founder[None, :]))
        rows = static_rows(static, count)
        rows[:, touched] = np.where(exists, exact, -np.inf)
        return rows

    def _audit(
        self,
        candidates: np.ndarray,
        fingerprints: np.ndarray,
        fnorm: np.ndarray,
        assigned: np.ndarray,
        fits: np.ndarray,
    ) -> None:
        """Count the tokens whose decision a search of every motif would share (same state)."""
        others = np.setdiff1d(np.arange(self.rows), candidates)
        self.audited += assigned.size
        if others.size == 0:
            self.agreed += assigned.size
            return
        dots = fingerprints @ self.sums[others].T
        sims = _similarity(dots, np.broadcast_to(self.norms[others], dots.shape), fnorm)
        best = np.argmax(sims, axis=1)
        value = sims[np.arange(assigned.size), best]
        number = self.live[others][best]
        width = candidates.size
        joined = assigned < width
        mine = np.where(joined, self.live[candidates[np.minimum(assigned, width - 1)]], -1) if width else -1
        beats = (value >= self.threshold) & (~joined | (value > fits) | ((value == fits) & (number < mine)))
        self.agreed += int((~beats).sum())

    def _commit(
        self,
        candidates: np.ndarray,
        assigned: np.ndarray,
        fits: np.ndarray,
        fingerprints: np.ndarray,
        probs: np.ndarray,
        tokens: np.ndarray,
    ) -> BlockDecisions:
        """Take a block's decisions (``assigned``: a column of ``candidates``, or ``width + p``
        for the motif token p founds) into the motifs, in token order."""
        count = assigned.size
        width = candidates.size
        novel = assigned == width + np.arange(count)
        founded = np.nonzero(novel)[0]
        first_row = self.rows
        self._grow(first_row + founded.size)
        new_rows = first_row + np.arange(founded.size)
        row_of_column = np.empty(width + count, dtype=np.int64)
        row_of_column[:width] = candidates
        row_of_column[width + founded] = new_rows
        rows = row_of_column[assigned]
        start_number = self.size
        self.live[new_rows] = start_number + np.arange(founded.size)
        self.sums[new_rows] = fingerprints[founded]
        self.prob_sums[new_rows] = probs[founded]
        self.founders.extend(tokens[founded].tolist())  # array("q"): 8 bytes a motif
        if self.counts.size < self.size:  # capacity doubles: appending stays O(1) per motif
            grown = np.zeros(max(self.size, 2 * self.counts.size), dtype=np.int64)
            grown[: self.counts.size] = self.counts
            self.counts = grown
        joined = ~novel
        _add_rows_in_order(self.sums, rows[joined], fingerprints[joined])
        _add_rows_in_order(self.prob_sums, rows[joined], probs[joined])
        self._counted(rows)
        self.rows = first_row + founded.size
        return BlockDecisions(self.live[rows], np.where(novel, 1.0, fits), novel)

    def _counted(self, rows: np.ndarray) -> None:
        """The members a block gave each row (``rows``: every token's) counted, and the norms of
        the rows whose sums grew made anew."""
        added = np.bincount(rows, minlength=self.rows)  # tokens each row took, rows in any order
        changed = np.flatnonzero(added)
        self.counts[self.live[changed]] += added[changed]
        self.norms[changed] = np.sqrt(np.einsum("ij,ij->i", self.sums[changed], self.sums[changed]))

    def _commit_joined(
        self, rows: np.ndarray, fits: np.ndarray, fingerprints: np.ndarray, probs: np.ndarray
    ) -> BlockDecisions:
        """``_commit`` of a block that founds nothing: every token joined the motif in ``rows``."""
        _add_rows_in_order(self.sums, rows, fingerprints)
        _add_rows_in_order(self.prob_sums, rows, probs)
        self._counted(rows)
        return BlockDecisions(self.live[rows], fits, np.zeros(rows.size, dtype=bool))

    def _grow(self, needed: int) -> None:
        if needed <= self.sums.shape[0]:
            return
        capacity = max(needed, 2 * self.sums.shape[0])
        for name in ("sums", "prob_sums"):
            old = getattr(self, name)
            grown = np.zeros((capacity, old.shape[1]))
            grown[: self.rows] = old[: self.rows]
            setattr(self, name, grown)
        norms = np.zeros(capacity)
        norms[: self.rows] = self.norms[: self.rows]
        self.norms = norms
        live = np.zeros(capacity, dtype=np.int64)
        live[: self.rows] = self.live[: self.rows]
        self.live = live

    def ledger(self, prefix: str) -> tuple[dict[str, int], dict[str, list[float]], dict[str, int]]:
        """Counts, centroids (mean probs) of motifs with two or more members, founding tokens."""
        return named(prefix, self.ledger_parts())

    def ledger_parts(self) -> tuple[Sequence[int], dict[int, list[float]], Sequence[int]]:
        """By motif number: counts, centroids of motifs with two or more members, founders."""
        counts = self.counts[: self.size]
        sums = dict(self.dropped)
        for row in range(self.rows):
            number = int(self.live[row])
            if self.counts[number] > 1:
                sums[number] = self.prob_sums[row]
        shared = sorted(sums)
        centroids: dict[int, list[float]] = {}
        if shared:
            stacked = np.stack([sums[n] for n in shared])
            sizes = self.counts[shared].astype(np.float64)
            means = np.round(stacked / sizes[:, None], 8)
            centroids = dict(zip(shared, means.tolist(), strict=True))
        return counts, centroids, self.founders  # type: ignore[return-value]


def named(
    prefix: str, parts: tuple[Sequence[int], dict[int, list[float]], Sequence[int]]
) -> tuple[dict[str, int], dict[str, list[float]], dict[str, int]]:
    """``ledger_parts`` keyed by motif id (``prefix`` and the number, three digits at least)."""
    counts, centroids, founders = parts
    return (
        {f"{prefix}{n:03d}": int(c) for n, c in enumerate(counts)},
        {f"{prefix}{n:03d}": row for n, row in centroids.items()},
        {f"{prefix}{n:03d}": int(t) for n, t in enumerate(founders)},
    )


@dataclass(slots=True)
class ExactClusters:
    """The exact-fingerprint matcher: a motif is one exact distribution (a dictionary lookup)."""

    keys: dict[bytes, int] = field(default_factory=dict)
    prob_sums: list[np.ndarray] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    founders: list[int] = field(default_factory=list)
    rounds: int = 0
    audited: int = 0
    agreed: int = 0

    @property
    def size(self) -> int:
        return len(self.founders)

    def assign(self, fingerprints: np.ndarray, probs: np.ndarray, tokens: np.ndarray) -> BlockDecisions:
        del fingerprints  # the key is the distribution itself
        count = probs.shape[0]
        numbers = np.empty(count, dtype=np.int64)
        novel = np.zeros(count, dtype=bool)
        for j in range(count):
            row = probs[j]
            number = self.keys.get(row.tobytes())
            if number is None:
                number = self.keys[row.tobytes()] = len(self.founders)
                self.founders.append(int(tokens[j]))
                self.prob_sums.append(row.copy())
                self.counts.append(1)
                novel[j] = True
            else:
                self.prob_sums[number] += row
                self.counts[number] += 1
            numbers[j] = number
        return BlockDecisions(numbers, np.ones(count), novel)

    def ledger(self, prefix: str) -> tuple[dict[str, int], dict[str, list[float]], dict[str, int]]:
        return named(prefix, self.ledger_parts())

    def ledger_parts(self) -> tuple[Sequence[int], dict[int, list[float]], Sequence[int]]:
        shared = [n for n, c in enumerate(self.counts) if c > 1]
        centroids: dict[int, list[float]] = {}
        if shared:
            sizes = np.asarray([self.counts[n] for n in shared], dtype=np.float64)
            means = np.round(np.stack([self.prob_sums[n] for n in shared]) / sizes[:, None], 8)
            centroids = dict(zip(shared, means.tolist(), strict=True))
        return list(self.counts), centroids, list(self.founders)


def _add_rows_in_order(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``np.add.at(target, rows, values)`` for a C-ordered 2-D ``target``: each element gets its
    additions in the order of ``rows``, as the sequential rule adds them, bit for bit. Done on the
    flat view, where numpy's unbuffered add has a fast path (3-5 times faster on a block)."""
    width = target.shape[1]
    flat = (rows[:, None] * width + np.arange(width)).ravel()
    np.add.at(target.reshape(-1), flat, values.reshape(-1))


def _touched(assigned: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(assigned, return_inverse=True)`` for values below ``columns``, without a sort."""
    present = np.zeros(columns, dtype=bool)
    present[assigned] = True
    touched = np.flatnonzero(present)
    place = np.cumsum(present) - 1
    return touched, place[assigned]


@functools.cache
def _strictly_lower(count: int) -> np.ndarray:
    """True below the diagonal (what ``np.tril(x, -1)`` keeps), made once per block size."""
    mask = np.tri(count, count, -1, dtype=bool)
    mask.flags.writeable = False
    return mask


def static_rows(static: np.ndarray, count: int) -> np.ndarray:
    """``[B, width + B]``: the static similarities, then a column per motif the block may found
    (none exists yet)."""
    rows = np.full((count, static.shape[1] + count), -np.inf)
    rows[:, : static.shape[1]] = static
    return rows


def _similarity(dots: np.ndarray, centres: np.ndarray, fnorm: np.ndarray) -> np.ndarray:
    """Cosine as the sequential rule defines it: a zero-norm motif is unlike any token; a
    zero-norm token (a perfectly uniform router) is like only a zero-norm motif."""
    if fnorm.size and centres.size and fnorm.min() > 0 and centres.min() > 0:
        quick: np.ndarray = dots / (centres * fnorm[:, None])  # no zero norm: the same numbers
        return quick
    with np.errstate(invalid="ignore", divide="ignore"):
        similarity = dots / (centres * fnorm[:, None])
    similarity = np.where(centres > 0, similarity, 0.0)
    uniform = fnorm == 0
    if uniform.any():
        similarity[uniform] = np.where(centres[uniform] == 0, 1.0, 0.0)
    return similarity


def _decide(rows: np.ndarray, threshold: float, width: int) -> np.ndarray:
    """The column each token takes: its best (first on ties) when at or above the threshold,
    else its own new motif's column."""
    count = rows.shape[0]
    best = np.argmax(rows, axis=1)
    fit = rows[np.arange(count), best]
    decided: np.ndarray = np.where(fit >= threshold, best, width + np.arange(count))
    return decided
