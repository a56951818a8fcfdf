"""Capture router decisions from Hugging Face ``transformers`` MoE models during ``generate()``.

Imports torch only when used; ``import inferoscope`` never loads this package.
"""

from .errors import CaptureError
from .hooks import RouterCapture, StepRouting
from .route import Document, RouteResult, route_corpus
from .routers import RouterSite, find_routers
from .run import capture_run

__all__ = [
    "CaptureError",
    "Document",
    "RouteResult",
    "RouterCapture",
    "RouterSite",
    "StepRouting",
    "capture_run",
    "find_routers",
    "route_corpus",
]
