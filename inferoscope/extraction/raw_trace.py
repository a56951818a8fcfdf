"""The original library's ``inferoscope.extraction.raw_trace`` import path (names only)."""

from .builders import MoELayerCaptureInput, build_moe_layer_trace, build_token_complete_event

__all__ = ["MoELayerCaptureInput", "build_moe_layer_trace", "build_token_complete_event"]
