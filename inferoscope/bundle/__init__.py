"""Bundle files on disk: atomic writer, strict loader, indexed reader."""

from .errors import RunBundleError
from .loader import load_run_bundle
from .reader import BundleOpenError, EventReadError, RunReader
from .report import ValidationReport
from .writer import write_run_bundle

__all__ = [
    "BundleOpenError",
    "EventReadError",
    "RunBundleError",
    "RunReader",
    "ValidationReport",
    "load_run_bundle",
    "write_run_bundle",
]
