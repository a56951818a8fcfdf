"""The inferoscope terminal inspector (Textual). Uses only the core's public API."""

from .app import InferoscopeApp, run_app

__all__ = ["InferoscopeApp", "run_app"]
