"""Validation of a bundle held as Python objects (the library API of contract §7).

Both functions report every issue. Schema problems come from the reference validator;
semantic checks run on whatever is type-sound, even where the schema already failed,
exactly as the original library's semantic validator does when called directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..versions import (
    CONTINGENCY_FILE,
    DERIVED_FILE,
    LAYOUT_FILE,
    MANIFEST_FILE,
    MOTIF_LEDGER_FILE,
    RAW_TRACE_FILE,
)
from .bundle_checks import FULL_RUN, PROFILES, RunChecks, manifest_semantic_issues
from .event_checks import check_event_chunk
from .issues import Location, ValidationIssue
from .raw_event import view_of_dict
from .schema import schema_issues

_CHUNK = 512


def _token_of(event: object, position: int) -> int:
    token = event.get("token_index") if isinstance(event, Mapping) else None
    return token if isinstance(token, int) and not isinstance(token, bool) else position


def validate_run_bundle_schema_issues(
    manifest: Any,
    raw_events: Sequence[Any],
    layout: Any,
    derived_events: Sequence[Any] | None = None,
    motif_ledger: Any = None,
    contingency: Any = None,
) -> list[ValidationIssue]:
    """Every schema problem of every artifact, each a located ``schema_violation``."""
    v02 = isinstance(manifest, dict) and manifest.get("schema_version") == "manifest/v0.2.0"
    issues = schema_issues(
        manifest,
        "manifest_v02" if v02 else "manifest",
        name="manifest",
        scope="manifest",
        location=Location(file=MANIFEST_FILE),
    )
    for position, event in enumerate(raw_events):
        issues += schema_issues(
            event,
            "raw_event",
            name=f"raw_events[{position}]",
            scope="raw_event",
            location=Location(file=RAW_TRACE_FILE, line=position + 1, token_index=_token_of(event, position)),
        )
    issues += schema_issues(
        layout, "layout", name="layout", scope="layout", location=Location(file=LAYOUT_FILE)
    )
    for position, event in enumerate(derived_events or ()):
        issues += schema_issues(
            event,
            "derived_event",
            name=f"derived_events[{position}]",
            scope="derived_event",
            location=Location(file=DERIVED_FILE, line=position + 1),
        )
    if motif_ledger is not None:
        issues += schema_issues(
            motif_ledger,
            "motif_ledger",
            name="motif_ledger",
            scope="motif_ledger",
            location=Location(file=MOTIF_LEDGER_FILE),
        )
    if contingency is not None:
        issues += schema_issues(
            contingency,
            "contingency",
            name="contingency",
            scope="contingency",
            location=Location(file=CONTINGENCY_FILE),
        )
    return issues


def validate_run_bundle_schema(
    manifest: Any,
    raw_events: Sequence[Any],
    layout: Any,
    derived_events: Sequence[Any] | None = None,
    motif_ledger: Any = None,
    contingency: Any = None,
) -> list[str]:
    """Every schema problem as text, as the original library returns them.

    ``validate_run_bundle_schema_issues`` gives the same problems as located issues.
    """
    return [
        issue.message
        for issue in validate_run_bundle_schema_issues(
            manifest, raw_events, layout, derived_events, motif_ledger, contingency
        )
    ]


def validate_raw_event_semantics(event: Any) -> list[ValidationIssue]:
    """The semantic issues of one raw event on its own (its layers, its timing)."""
    return check_event_chunk([view_of_dict(event, 0, None)], file=None)


def validate_manifest_semantics(
    manifest: Any, *, derived_artifacts_present: bool = False
) -> list[ValidationIssue]:
    """The semantic issues of a manifest on its own (a run_id that is not a canonical path)."""
    del derived_artifacts_present  # accepted for the original library's callers; changes nothing
    return manifest_semantic_issues(manifest if isinstance(manifest, Mapping) else {})


def validate_layout_semantics(layout: Any) -> list[ValidationIssue]:
    """The semantic issues of a layout on its own (repeated layers or experts)."""
    if not isinstance(layout, Mapping):
        return []
    return [
        issue
        for issue in RunChecks({}).check_layout(layout)
        if issue.code in ("duplicate_layer_index", "duplicate_expert_index")
    ]


def validate_run_bundle_semantics(
    manifest: Any,
    raw_events: Sequence[Any],
    layout: Any,
    derived_events: Sequence[Any] | None = None,
    motif_ledger: Any = None,
    contingency: Any = None,
    *,
    profile: str = FULL_RUN,
) -> list[ValidationIssue]:
    """Every semantic issue (contract §4) of the bundle under ``profile`` (only ``full_run``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown validation profile {profile!r}; known: {', '.join(PROFILES)}")
    manifest_map = manifest if isinstance(manifest, Mapping) else {}
    issues = manifest_semantic_issues(manifest_map)
    checks = RunChecks(manifest_map)
    for start in range(0, len(raw_events), _CHUNK):
        views = [
            view_of_dict(event, start + offset, start + offset + 1)
            for offset, event in enumerate(raw_events[start : start + _CHUNK])
        ]
        issues += check_event_chunk(views) + checks.observe_raw(views)
    issues += checks.finish_raw()
    if isinstance(layout, Mapping):
        issues += checks.check_layout(layout)
    if derived_events:
        issues += checks.check_derived_events(
            [(position + 1, event) for position, event in enumerate(derived_events)]
        )
    for artifact, obj in (("motif_ledger", motif_ledger), ("contingency", contingency)):
        if isinstance(obj, Mapping):
            issues += checks.check_provisional_object(artifact, obj)
    return issues


def validate_run_bundle(
    manifest: Any,
    raw_events: Sequence[Any],
    layout: Any,
    derived_events: Sequence[Any] | None = None,
    motif_ledger: Any = None,
    contingency: Any = None,
) -> list[ValidationIssue]:
    """Schema issues, then semantic issues: everything, nothing hidden behind a first failure."""
    return validate_run_bundle_schema_issues(
        manifest, raw_events, layout, derived_events, motif_ledger, contingency
    ) + validate_run_bundle_semantics(manifest, raw_events, layout, derived_events, motif_ledger, contingency)
