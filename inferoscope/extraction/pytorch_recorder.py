"""The original library's ``inferoscope.extraction.pytorch_recorder`` import path (names only)."""

from .recorder import PyTorchRunBundleRecorder

__all__ = ["PyTorchRunBundleRecorder"]
