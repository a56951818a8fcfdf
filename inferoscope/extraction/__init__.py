"""Capture-side builders, the recorder, and bundle I/O: the original library's import path."""

from ..bundle.loader import load_run_bundle
from ..bundle.writer import write_run_bundle
from ..validation import (
    ValidationIssue,
    validate_run_bundle_schema,
    validate_run_bundle_semantics,
)
from .builders import (
    MoELayerCaptureInput,
    build_layer_grid_layout,
    build_manifest,
    build_moe_layer_trace,
    build_token_complete_event,
)
from .pytorch import PyTorchMoELayerCaptureInput, build_token_complete_event_from_pytorch
from .recorder import PyTorchRunBundleRecorder, build_olmoe_layer_inputs, record_olmoe_generated_token

__all__ = [
    "MoELayerCaptureInput",
    "PyTorchMoELayerCaptureInput",
    "PyTorchRunBundleRecorder",
    "ValidationIssue",
    "build_layer_grid_layout",
    "build_manifest",
    "build_moe_layer_trace",
    "build_olmoe_layer_inputs",
    "build_token_complete_event",
    "build_token_complete_event_from_pytorch",
    "load_run_bundle",
    "record_olmoe_generated_token",
    "validate_run_bundle_schema",
    "validate_run_bundle_semantics",
    "write_run_bundle",
]
