"""Cross-file checks (contract §4, profile ``full_run``): manifest, layout, derived, whole run.

``RunChecks`` is fed the raw events chunk by chunk and keeps only arrays of token indices
and line numbers (16 bytes a token), so it works the same for 5 and 5,000,000 tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np

from ..run_ids import run_id_problem
from ..versions import (
    ARTIFACT_VERSION_FIELD,
    CONTINGENCY_FILE,
    DERIVED_FILE,
    LAYOUT_FILE,
    MANIFEST_FILE,
    MOTIF_LEDGER_FILE,
    RAW_TRACE_FILE,
)
from .issues import Location, ValidationIssue
from .messages import contract_message
from .raw_event import EventView

FULL_RUN = "full_run"
PROFILES = (FULL_RUN,)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def manifest_semantic_issues(manifest: Mapping[str, Any]) -> list[ValidationIssue]:
    """``run_id_path_invalid`` for a run_id that is not a canonical relative path."""
    run_id = manifest.get("run_id")
    if not isinstance(run_id, str) or not run_id:  # the schema reports those
        return []
    problem = run_id_problem(run_id, "manifest run_id")
    if problem is None:
        return []
    return [
        ValidationIssue(
            scope="manifest",
            code="run_id_path_invalid",
            message=problem,
            location=Location(file=MANIFEST_FILE, json_path="$.run_id"),
            detail=f"run_id is {run_id!r}",
        )
    ]


class RunChecks:
    """Whole-bundle checks against one manifest, fed artifact by artifact."""

    def __init__(self, manifest: Mapping[str, Any] | None) -> None:
        self.manifest: Mapping[str, Any] = manifest if isinstance(manifest, Mapping) else {}
        run_id = self.manifest.get("run_id")
        self.run_id: str | None = run_id if isinstance(run_id, str) else None
        versions = self.manifest.get("artifact_versions")
        self.declared: Mapping[str, Any] = versions if isinstance(versions, Mapping) else {}
        self._token_chunks: list[np.ndarray] = []
        self._line_chunks: list[np.ndarray] = []
        self._events = 0
        self.layer_experts: dict[int, tuple[int, int | None]] = {}  # layer -> (n, first token)
        self.layer_first_line: dict[int, int | None] = {}
        self._inconsistent: dict[int, tuple[int, int | None, int | None]] = {}
        self._raw_tokens: np.ndarray | None = None
        self._raw_known: np.ndarray | None = None
        self._derived_seen: set[int] = set()

    # -- shared helpers -------------------------------------------------------------------
    def _run_id_issue(self, artifact: str, value: object, location: Location) -> list[ValidationIssue]:
        if self.run_id is None or not isinstance(value, str) or value == self.run_id:
            return []
        return [
            ValidationIssue(
                scope="run_bundle",
                code="run_id_mismatch",
                message=contract_message("run_id_mismatch", artifact=artifact),
                detail=f"{artifact} run_id {value!r} differs from the manifest's {self.run_id!r}",
                location=location,
            )
        ]

    def _version_issue(self, artifact: str, value: object, location: Location) -> list[ValidationIssue]:
        declared = self.declared.get(ARTIFACT_VERSION_FIELD[artifact])
        if not isinstance(declared, str) or not isinstance(value, str) or value == declared:
            return []
        return [
            ValidationIssue(
                scope="run_bundle",
                code=f"{artifact}_schema_version_mismatch",
                message=contract_message(
                    "schema_version_mismatch", artifact=artifact, key=ARTIFACT_VERSION_FIELD[artifact]
                ),
                detail=(
                    f"{artifact} schema_version {value!r} differs from the manifest's declared {declared!r}"
                ),
                location=location,
            )
        ]

    def _derivation_issues(
        self, artifact: str, obj: Mapping[str, Any], location: Location
    ) -> list[ValidationIssue]:
        issues: list[ValidationIssue] = []
        for key, code in (
            ("derivation_version", "derivation_version_mismatch"),
            ("derivation_config_id", "derivation_config_mismatch"),
        ):
            expected, value = self.manifest.get(key), obj.get(key)
            if isinstance(expected, str) and isinstance(value, str) and value != expected:
                issues.append(
                    ValidationIssue(
                        scope="run_bundle",
                        code=code,
                        message=contract_message(code, artifact=artifact),
                        detail=f"{artifact} {key} {value!r} differs from the manifest's {expected!r}",
                        location=location,
                    )
                )
        return issues

    # -- raw events -----------------------------------------------------------------------
    def observe_raw(self, views: Sequence[EventView], file: str = RAW_TRACE_FILE) -> list[ValidationIssue]:
        """Record a chunk of raw events (in file order) and return its cross-file issues."""
        issues: list[ValidationIssue] = []
        tokens = np.array(
            [-1 if v.token_index is None else max(-1, min(v.token_index, 2**62)) for v in views],
            dtype=np.int64,
        )
        lines = np.array([-1 if v.line is None else v.line for v in views], dtype=np.int64)
        self._token_chunks.append(tokens)
        self._line_chunks.append(lines)
        self._events += len(views)
        last_signature: bytes | None = None
        for view in views:
            where = Location(file=file, line=view.line, token_index=view.token_index)
            if view.run_id is not None and view.run_id != self.run_id:
                issues += self._run_id_issue("raw_event", view.run_id, where)
            if view.schema_version is not None:
                issues += self._version_issue("raw_event", view.schema_version, where)
            if view.dense is not None:
                if view.dense.signature == last_signature:
                    continue  # same layers and counts as the event before: nothing new to learn
                last_signature = view.dense.signature
                shapes = [(int(row[0]), int(row[1])) for row in view.dense.meta]
            else:
                last_signature = None
                shapes = [(layer.layer_index, layer.num_total_experts) for layer in view.layers]
            for layer_index, n in shapes:
                seen = self.layer_experts.get(layer_index)
                if seen is None:
                    self.layer_experts[layer_index] = (n, view.token_index)
                    self.layer_first_line[layer_index] = view.line
                elif seen[0] != n and layer_index not in self._inconsistent:
                    self._inconsistent[layer_index] = (n, view.token_index, view.line)
        return issues

    def observe_tokens(self, tokens: np.ndarray, lines: np.ndarray) -> None:
        """Record raw events already known to carry this run's id and schema version (v0.2 fast path)."""
        self._token_chunks.append(tokens)
        self._line_chunks.append(lines)
        self._events += int(tokens.size)

    def absorb(self, other: RunChecks, line_offset: int) -> None:
        """Append the raw-trace state of the next segment of the same file."""
        self._token_chunks += other._token_chunks
        self._line_chunks += [np.where(lines > 0, lines + line_offset, lines) for lines in other._line_chunks]
        self._events += other._events
        self._raw_tokens = None
        for layer_index, (n, token) in other.layer_experts.items():
            mine = self.layer_experts.get(layer_index)
            theirs_bad = other._inconsistent.get(layer_index)
            if mine is None:
                self.layer_experts[layer_index] = (n, token)
                self.layer_first_line[layer_index] = self._first_line(other, layer_index, line_offset)
                if theirs_bad is not None:
                    self._inconsistent[layer_index] = self._shift(theirs_bad, line_offset)
            elif layer_index in self._inconsistent:
                continue
            elif mine[0] != n:
                self._inconsistent[layer_index] = (
                    n,
                    token,
                    self._first_line(other, layer_index, line_offset),
                )
            elif theirs_bad is not None:
                self._inconsistent[layer_index] = self._shift(theirs_bad, line_offset)

    @staticmethod
    def _shift(entry: tuple[int, int | None, int | None], offset: int) -> tuple[int, int | None, int | None]:
        n, token, line = entry
        return (n, token, None if line is None else line + offset)

    @staticmethod
    def _first_line(other: RunChecks, layer_index: int, offset: int) -> int | None:
        line = other.layer_first_line.get(layer_index)
        return None if line is None else line + offset

    def raw_token_indices(self) -> np.ndarray:
        if self._raw_tokens is None:
            self._raw_tokens = (
                np.concatenate(self._token_chunks) if self._token_chunks else np.zeros(0, np.int64)
            )
        return self._raw_tokens

    def finish_raw(self, file: str = RAW_TRACE_FILE) -> list[ValidationIssue]:
        """Issues that need the whole raw trace: token index order, repeats, layer shapes."""
        issues: list[ValidationIssue] = []
        tokens = self.raw_token_indices()
        lines = np.concatenate(self._line_chunks) if self._line_chunks else np.zeros(0, np.int64)
        known = tokens >= 0
        if known.any():
            order = np.argsort(tokens, kind="stable")
            ordered = tokens[order]
            repeat = np.zeros(tokens.size, dtype=bool)
            repeat[order[1:]] = (ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)
            for position in np.flatnonzero(repeat):
                issues.append(
                    ValidationIssue(
                        scope="run_bundle",
                        code="duplicate_raw_token_index",
                        message=contract_message("duplicate_raw_token_index"),
                        detail=f"token_index {int(tokens[position])} appears more than once",
                        location=Location(
                            file=file,
                            line=int(lines[position]) if lines[position] > 0 else None,
                            token_index=int(tokens[position]),
                        ),
                    )
                )
            expected = np.arange(tokens.size)
            wrong = known & (tokens != expected)
            if wrong.any():
                first = int(np.flatnonzero(wrong)[0])
                issues.append(
                    ValidationIssue(
                        scope="run_bundle",
                        code="raw_token_index_sequence_invalid",
                        message=contract_message("raw_token_index_sequence_invalid"),
                        detail=(
                            f"raw token_index values are not 0..{tokens.size - 1} in file order: "
                            f"{int(wrong.sum())} event(s) out of place, the first is event {first} "
                            f"with token_index {int(tokens[first])}"
                        ),
                        location=Location(
                            file=file,
                            line=int(lines[first]) if lines[first] > 0 else None,
                            token_index=int(tokens[first]),
                        ),
                    )
                )
        for layer_index, (n, token, line) in sorted(self._inconsistent.items()):
            first_n = self.layer_experts[layer_index][0]
            issues.append(
                ValidationIssue(
                    scope="run_bundle",
                    code="raw_layer_expert_count_inconsistent",
                    message=contract_message("raw_layer_expert_count_inconsistent", layer=layer_index),
                    detail=(
                        f"layer {layer_index} has num_total_experts {first_n} in earlier events "
                        f"but {n} from {'line ' + str(line) if token is None else 'token ' + str(token)} on"
                    ),
                    location=Location(file=file, line=line, token_index=token, layer_index=layer_index),
                )
            )
        return issues

    # -- layout ---------------------------------------------------------------------------
    def check_layout(self, layout: Mapping[str, Any], file: str = LAYOUT_FILE) -> list[ValidationIssue]:
        """Layout duplicates, versions and its agreement with the raw layers seen so far."""
        where = Location(file=file)
        issues = self._run_id_issue("layout", layout.get("run_id"), where)
        issues += self._version_issue("layout", layout.get("schema_version"), where)
        positions_by_layer: dict[int, list[Any]] = {}
        layers = layout.get("layers")
        for number, item in enumerate(layers if isinstance(layers, list) else []):
            if not isinstance(item, Mapping) or not _is_int(item.get("layer_index")):
                continue
            layer_index = item["layer_index"]
            positions = item.get("positions")
            positions = positions if isinstance(positions, list) else []
            at = Location(file=file, layer_index=layer_index, json_path=f"$.layers[{number}]")
            if layer_index in positions_by_layer:
                issues.append(
                    ValidationIssue(
                        scope=f"layout.layer[{layer_index}]",
                        code="duplicate_layer_index",
                        message=contract_message("layout_duplicate_layer_index"),
                        detail=f"layout lists layer {layer_index} more than once",
                        location=at,
                    )
                )
                continue
            positions_by_layer[layer_index] = positions
            seen: set[int] = set()
            for position in positions:
                expert = position.get("expert_index") if isinstance(position, Mapping) else None
                if not _is_int(expert):
                    continue
                if expert in seen:
                    issues.append(
                        ValidationIssue(
                            scope=f"layout.layer[{layer_index}]",
                            code="duplicate_expert_index",
                            message=contract_message("duplicate_expert_index"),
                            detail=f"layout layer {layer_index} places expert {expert} more than once",
                            location=Location(
                                file=file,
                                layer_index=layer_index,
                                expert_index=expert,
                                json_path=f"$.layers[{number}]",
                            ),
                        )
                    )
                seen.add(expert)
        for layer_index, (n, _token) in sorted(self.layer_experts.items()):
            at = Location(file=file, layer_index=layer_index)
            positions = positions_by_layer.get(layer_index)
            if positions is None or len(positions) != n:
                found = "no entry" if positions is None else f"{len(positions)} positions"
                first_line = self.layer_first_line.get(layer_index)
                user = f" (first used at {RAW_TRACE_FILE} line {first_line})" if first_line else ""
                issues.append(
                    ValidationIssue(
                        scope="run_bundle",
                        code="layout_expert_count_mismatch",
                        message=contract_message(
                            "layout_expert_count_mismatch", layer=layer_index, experts=n
                        ),
                        detail=f"layout layer {layer_index} must place {n} experts as the raw events do"
                        f"{user}; it has {found}",
                        location=at,
                    )
                )
            if positions is None:
                continue
            experts = {e for p in positions if isinstance(p, Mapping) and _is_int(e := p.get("expert_index"))}
            exact = (
                len(positions) == n and len(experts) == n and all(_is_int(e) and 0 <= e < n for e in experts)
            )  # never materialise range(n): n comes from the file
            if not exact:
                issues.append(
                    ValidationIssue(
                        scope="run_bundle",
                        code="layout_expert_index_set_mismatch",
                        message=contract_message(
                            "layout_expert_index_set_mismatch", layer=layer_index, last=n - 1
                        ),
                        detail=f"layout layer {layer_index} expert indices are not exactly 0..{n - 1}",
                        location=at,
                    )
                )
        return issues

    # -- derived artifacts ----------------------------------------------------------------
    def check_derived_events(
        self, events: Sequence[tuple[int | None, Any]], file: str = DERIVED_FILE
    ) -> list[ValidationIssue]:
        """A chunk of derived events as (line, object) pairs, after the raw trace is finished."""
        issues: list[ValidationIssue] = []
        if self._raw_known is None:
            raw = self.raw_token_indices()
            self._raw_known = np.unique(raw[raw >= 0])
        raw_known = self._raw_known
        seen = self._derived_seen
        for line, event in events:
            if not isinstance(event, Mapping):
                continue
            token = event.get("token_index")
            where = Location(file=file, line=line, token_index=token if _is_int(token) else None)
            issues += self._run_id_issue("derived_event", event.get("run_id"), where)
            issues += self._version_issue("derived_event", event.get("schema_version"), where)
            issues += self._derivation_issues("derived_event", event, where)
            if not _is_int(token):
                continue
            if token in seen:
                issues.append(
                    ValidationIssue(
                        scope="run_bundle",
                        code="duplicate_derived_token_index",
                        message=contract_message("duplicate_derived_token_index"),
                        detail=f"derived token_index {token} appears more than once",
                        location=where,
                    )
                )
            seen.add(token)
            position = int(np.searchsorted(raw_known, token)) if token < 2**62 else raw_known.size
            if position >= raw_known.size or raw_known[position] != token:
                issues.append(
                    ValidationIssue(
                        scope="run_bundle",
                        code="derived_token_index_missing_from_raw",
                        message=contract_message("derived_token_index_missing_from_raw"),
                        detail=f"derived token_index {token} has no raw event",
                        location=where,
                    )
                )
        return issues

    def check_provisional_object(self, artifact: str, obj: Mapping[str, Any]) -> list[ValidationIssue]:
        """motif_ledger.json or contingency.json against the manifest."""
        file = MOTIF_LEDGER_FILE if artifact == "motif_ledger" else CONTINGENCY_FILE
        where = Location(file=file)
        issues = self._run_id_issue(artifact, obj.get("run_id"), where)
        issues += self._version_issue(artifact, obj.get("schema_version"), where)
        issues += self._derivation_issues(artifact, obj, where)
        return issues
