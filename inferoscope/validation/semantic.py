"""The original library's ``inferoscope.validation.semantic`` import path (names only)."""

from .in_memory import (
    validate_layout_semantics,
    validate_manifest_semantics,
    validate_raw_event_semantics,
    validate_run_bundle_semantics,
)
from .issues import ValidationIssue

__all__ = [
    "ValidationIssue",
    "validate_layout_semantics",
    "validate_manifest_semantics",
    "validate_raw_event_semantics",
    "validate_run_bundle_semantics",
]
