"""The original library's ``inferoscope.extraction.pytorch`` import path (names only).

The builders take tensor-likes (``detach``/``cpu``/``tolist``) directly, so the PyTorch
names are the same objects under the original's names; torch is never imported here.
"""

from .builders import MoELayerCaptureInput, build_token_complete_event

PyTorchMoELayerCaptureInput = MoELayerCaptureInput
build_token_complete_event_from_pytorch = build_token_complete_event

__all__ = ["PyTorchMoELayerCaptureInput", "build_token_complete_event_from_pytorch"]
