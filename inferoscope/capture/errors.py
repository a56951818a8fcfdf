"""The one exception capture raises for models it cannot record faithfully."""

from __future__ import annotations


class CaptureError(RuntimeError):
    """The model cannot be captured as contract v0.1.0 events (the message says why)."""
