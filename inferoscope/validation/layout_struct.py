"""A typed mirror of the layout schema, so a 16 x 64 layout is checked in under a millisecond.

Only used on layouts parsed from a file (NaN and Infinity cannot occur there). When the
typed conversion refuses, the jsonschema reference gives the verdict and every problem.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .raw_event import NonEmptyStr, NonNegInt


class Position(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    expert_index: NonNegInt
    x: float
    y: float
    z: float


class LayoutLayer(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    layer_index: NonNegInt
    positions: Annotated[list[Position], msgspec.Meta(min_length=1)]


class Layout(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    schema_version: Literal["layout/v0.1.0"]
    run_id: NonEmptyStr
    layout_id: NonEmptyStr
    layers: Annotated[list[LayoutLayer], msgspec.Meta(min_length=1)]
    layout_kind: NonEmptyStr | msgspec.UnsetType = msgspec.UNSET


def layout_conforms(instance: Any) -> bool:
    """True only if the layout schema certainly accepts ``instance`` (parsed from JSON)."""
    try:
        msgspec.convert(instance, Layout, strict=True)
    except (msgspec.ValidationError, TypeError, OverflowError, UnicodeError, RecursionError):
        return False  # the reference validator gives the verdict and the located issues
    return True
