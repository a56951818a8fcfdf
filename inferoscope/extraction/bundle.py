"""The original library's ``inferoscope.extraction.bundle`` import path (names only)."""

from .builders import build_layer_grid_layout, build_manifest

__all__ = ["build_layer_grid_layout", "build_manifest"]
