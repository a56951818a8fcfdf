"""inferoscope: capture, validate and replay sparse Mixture-of-Experts routing.

The core package never imports textual or torch; capture and the terminal app load them
only when used.
"""

from .bundle import (
    BundleOpenError,
    EventReadError,
    RunBundleError,
    RunReader,
    ValidationReport,
    load_run_bundle,
    write_run_bundle,
)
from .derive import derive_bundle_artifacts
from .events import LayerEvent, TokenEvent
from .extraction import (
    MoELayerCaptureInput,
    PyTorchRunBundleRecorder,
    build_layer_grid_layout,
    build_manifest,
    build_moe_layer_trace,
    build_token_complete_event,
    record_olmoe_generated_token,
)
from .run_ids import RunIdError
from .textsafe import visible
from .validation import (
    Location,
    ValidationIssue,
    validate_run_bundle,
    validate_run_bundle_schema,
    validate_run_bundle_semantics,
)

__version__ = "0.2.0"

__all__ = [
    "BundleOpenError",
    "EventReadError",
    "LayerEvent",
    "Location",
    "MoELayerCaptureInput",
    "PyTorchRunBundleRecorder",
    "RunBundleError",
    "RunIdError",
    "RunReader",
    "TokenEvent",
    "ValidationIssue",
    "ValidationReport",
    "__version__",
    "build_layer_grid_layout",
    "build_manifest",
    "build_moe_layer_trace",
    "build_token_complete_event",
    "derive_bundle_artifacts",
    "load_run_bundle",
    "record_olmoe_generated_token",
    "validate_run_bundle",
    "validate_run_bundle_schema",
    "validate_run_bundle_semantics",
    "visible",
    "write_run_bundle",
]
