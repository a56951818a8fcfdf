"""The original library's ``inferoscope.extraction.olmoe`` import path (names only)."""

from .recorder import build_olmoe_layer_inputs, record_olmoe_generated_token

__all__ = ["build_olmoe_layer_inputs", "record_olmoe_generated_token"]
