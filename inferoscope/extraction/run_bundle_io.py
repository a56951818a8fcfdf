"""The original library's ``inferoscope.extraction.run_bundle_io`` import path (names only)."""

from ..bundle.loader import load_run_bundle
from ..bundle.writer import write_run_bundle

__all__ = ["load_run_bundle", "write_run_bundle"]
