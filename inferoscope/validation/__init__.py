"""Schema and semantic validation with located issues: the original library's import path."""

from .aggregates import LayerAggregate, RunAggregates
from .bundle_checks import FULL_RUN, PROFILES
from .in_memory import validate_run_bundle, validate_run_bundle_schema, validate_run_bundle_semantics
from .issues import Location, ValidationIssue, count_by_code, has_errors
from .schema import SCHEMA_VIOLATION

__all__ = [
    "FULL_RUN",
    "PROFILES",
    "SCHEMA_VIOLATION",
    "LayerAggregate",
    "Location",
    "RunAggregates",
    "ValidationIssue",
    "count_by_code",
    "has_errors",
    "validate_run_bundle",
    "validate_run_bundle_schema",
    "validate_run_bundle_semantics",
]
