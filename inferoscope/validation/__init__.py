"""Schema and semantic validation with located issues: the original library's import path."""

from .aggregates import LayerAggregate, PairCounts, RunAggregates
from .bundle_checks import FULL_RUN, PROFILES
from .in_memory import (
    validate_layout_semantics,
    validate_manifest_semantics,
    validate_raw_event_semantics,
    validate_run_bundle,
    validate_run_bundle_schema,
    validate_run_bundle_schema_issues,
    validate_run_bundle_semantics,
)
from .issues import Location, ValidationIssue, count_by_code, has_errors
from .schema import SCHEMA_VIOLATION, validate_artifact_schema

__all__ = [
    "FULL_RUN",
    "PROFILES",
    "SCHEMA_VIOLATION",
    "LayerAggregate",
    "Location",
    "PairCounts",
    "RunAggregates",
    "ValidationIssue",
    "count_by_code",
    "has_errors",
    "validate_artifact_schema",
    "validate_layout_semantics",
    "validate_manifest_semantics",
    "validate_raw_event_semantics",
    "validate_run_bundle",
    "validate_run_bundle_schema",
    "validate_run_bundle_schema_issues",
    "validate_run_bundle_semantics",
]
