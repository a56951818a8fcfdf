"""Typed views of a raw ``token_complete`` event, and how to get one from bytes or a dict.

The msgspec Structs encode the raw-event schema (unknown fields forbidden, consts, ranges),
so a successful typed decode implies the reference schema accepts the event. Anything the
typed decode refuses goes to the reference path (jsonschema), which gives the verdict and
every problem; the typed path never accepts what the reference refuses (tests prove it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_type_hints

import msgspec
import numpy as np

from ..jsonfmt import is_finite_number

Prob = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]


class Timing(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    decode_start: float
    decode_end: float
    decode_duration: NonNegFloat


class Layer(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    layer_index: NonNegInt
    layer_kind: Literal["moe"]
    num_total_experts: PosInt
    num_active_experts: PosInt
    router_probs: Annotated[list[Prob], msgspec.Meta(min_length=1)]
    topk_indices: list[NonNegInt]
    topk_probs: list[Prob]
    entropy: NonNegFloat
    normalized_entropy: Prob
    top1_prob: Prob
    top1_top2_margin: Prob


class RawEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    event_type: Literal["token_complete"]
    schema_version: Literal["raw/v0.1.0"]
    run_id: NonEmptyStr
    token_index: NonNegInt
    token_id: int
    token_text: str
    context_length: NonNegInt
    timing_ms: Timing
    layers: Annotated[list[Layer], msgspec.Meta(min_length=1)]


RAW_EVENT_DECODER = msgspec.json.Decoder(RawEvent)


class TokenMeta(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A contract v0.2 raw event: one token's metadata (its routing is in the array files)."""

    event_type: Literal["token_complete"]
    schema_version: Literal["raw/v0.2.0"]
    run_id: NonEmptyStr
    token_index: NonNegInt
    token_id: int
    token_text: str
    context_length: NonNegInt
    timing_ms: Timing | msgspec.UnsetType = msgspec.UNSET
    document_index: NonNegInt | msgspec.UnsetType = msgspec.UNSET
    source: str | msgspec.UnsetType = msgspec.UNSET


TOKEN_META_DECODER = msgspec.json.Decoder(TokenMeta)


def _lenient(struct: type[msgspec.Struct], **types: Any) -> Any:
    """``struct`` with unknown fields allowed (nested Structs swapped in through ``types``)."""
    hints = get_type_hints(struct, include_extras=True)
    fields = [(name, types.get(name, hints[name])) for name in struct.__struct_fields__]
    return msgspec.defstruct(f"Lenient{struct.__name__}", fields, gc=False)


_LENIENT_LAYER = _lenient(Layer)
#: the raw-event schema except "no unknown fields": a line it accepts breaks the schema only by
#: unknown keys, which ``unknown_key_problems`` lists exactly as the reference would
LENIENT_DECODER = msgspec.json.Decoder(
    _lenient(
        RawEvent,
        timing_ms=_lenient(Timing),
        layers=Annotated[list[_LENIENT_LAYER], msgspec.Meta(min_length=1)],  # type: ignore[valid-type]
    )
)
_KNOWN_KEYS = (
    frozenset(RawEvent.__struct_fields__),
    frozenset(Timing.__struct_fields__),
    frozenset(Layer.__struct_fields__),
)


_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_LAYER_KEYS = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])


def unknown_key_problems(data: bytes | memoryview) -> list[tuple[tuple[Any, ...], str]]:
    """The keys the schema does not allow, as (JSON path, text), in the reference's order.

    Only for a line the lenient decoder accepted (so every container has the right type). Only
    the keys are read: values stay unparsed bytes.
    """
    top, timing, layer = _KNOWN_KEYS
    event = _KEYS.decode(data)
    places: list[tuple[tuple[Any, ...], dict[str, Any], frozenset[str]]] = [((), event, top)]
    places.append((("timing_ms",), _KEYS.decode(event["timing_ms"]), timing))
    places += [(("layers", i), item, layer) for i, item in enumerate(_LAYER_KEYS.decode(event["layers"]))]
    problems = []
    for path, obj, known in sorted(places, key=lambda place: json.dumps(list(place[0]))):
        problems += [
            ((*path, key), "is not allowed by the schema") for key in sorted(k for k in obj if k not in known)
        ]
    return problems


@dataclass(slots=True)
class DenseLayers:
    """An event's layers as arrays, made right after decoding (while the floats are hot in
    cache) when every layer has the same array lengths; then the Python lists are dropped."""

    meta: np.ndarray  # [L, 3] int64: layer_index, num_total_experts, num_active_experts
    ints: np.ndarray  # [L, 3 + k] int64: meta, then topk_indices
    floats: np.ndarray  # [L, n + k2 + 4]: router_probs, topk_probs, then the four scalars
    n: int
    k: int
    k2: int
    signature: bytes  # equal signatures: same layers, same shapes (stackable)

    @property
    def rp(self) -> np.ndarray:
        return self.floats[:, : self.n]

    @property
    def ti(self) -> np.ndarray:
        return self.ints[:, 3:]

    @property
    def tp(self) -> np.ndarray:
        return self.floats[:, self.n : self.n + self.k2]

    @property
    def scalars(self) -> np.ndarray:
        """entropy, normalized_entropy, top1_prob, top1_top2_margin per layer."""
        return self.floats[:, self.n + self.k2 :]


def densify(layers: list[Layer]) -> DenseLayers | None:
    """Arrays of ``layers``, or None when their lengths differ (the per-layer path handles it).

    Two flat lists (integers, floats) and two numpy conversions per event: numpy's cost is
    per element, while nested small lists cost per list.
    """
    if not layers:
        return None
    first = layers[0]
    n, k, k2 = len(first.router_probs), len(first.topk_indices), len(first.topk_probs)
    ints: list[int] = []
    floats: list[float] = []
    for la in layers:
        if len(la.router_probs) != n or len(la.topk_indices) != k or len(la.topk_probs) != k2:
            return None
        ints.append(la.layer_index)
        ints.append(la.num_total_experts)
        ints.append(la.num_active_experts)
        ints += la.topk_indices
        floats += la.router_probs
        floats += la.topk_probs
        floats.append(la.entropy)
        floats.append(la.normalized_entropy)
        floats.append(la.top1_prob)
        floats.append(la.top1_top2_margin)
    try:
        int_rows = np.array(ints, dtype=np.int64).reshape(len(layers), 3 + k)
    except OverflowError:
        return None
    float_rows = np.array(floats, dtype=np.float64).reshape(len(layers), n + k2 + 4)
    meta = np.ascontiguousarray(int_rows[:, :3])
    shape = np.array([n, k, k2], dtype=np.int64)
    return DenseLayers(meta, int_rows, float_rows, n, k, k2, meta.tobytes() + shape.tobytes())


@dataclass(slots=True)
class EventView:
    """What the semantic checks need of one event, whichever path it was read by.

    ``layers`` holds only the layers whose types are sound enough to check; ``layer_indices``
    holds every layer's index as written (for duplicate detection).
    """

    position: int
    line: int | None
    token_index: int | None
    run_id: str | None
    schema_version: str | None
    timing: tuple[float, float, float] | None
    layer_indices: list[object]
    layers: list[Layer]
    unsound_layers: list[tuple[object, str]] = field(default_factory=list)
    dense: DenseLayers | None = None


def view_of_struct(event: RawEvent, position: int, line: int | None) -> EventView:
    timing = event.timing_ms
    dense = densify(event.layers)
    return EventView(
        position=position,
        line=line,
        token_index=event.token_index,
        run_id=event.run_id,
        schema_version=event.schema_version,
        timing=(timing.decode_start, timing.decode_end, timing.decode_duration),
        layer_indices=[] if dense is not None else [layer.layer_index for layer in event.layers],
        layers=[] if dense is not None else event.layers,
        dense=dense,
    )


def view_of_meta(event: TokenMeta, position: int, line: int | None) -> EventView:
    timing = event.timing_ms
    return EventView(
        position=position,
        line=line,
        token_index=event.token_index,
        run_id=event.run_id,
        schema_version=event.schema_version,
        timing=None
        if isinstance(timing, msgspec.UnsetType)
        else (timing.decode_start, timing.decode_end, timing.decode_duration),
        layer_indices=[],
        layers=[],
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_INT_FIELDS = ("layer_index", "num_total_experts", "num_active_experts")
_NUMBER_FIELDS = ("entropy", "normalized_entropy", "top1_prob", "top1_top2_margin")


def _layer_problem(layer: dict[str, Any]) -> str | None:
    for name in _INT_FIELDS:
        if not _is_int(layer.get(name)):
            return f"{name} is not an integer"
    for name in _NUMBER_FIELDS:
        if _number(layer.get(name)) is None:
            return f"{name} is not a finite number"
    for name in ("router_probs", "topk_probs"):
        values = layer.get(name)
        if not isinstance(values, list) or any(_number(v) is None for v in values):
            return f"{name} is not a list of finite numbers"
    indices = layer.get("topk_indices")
    if not isinstance(indices, list) or not all(_is_int(v) for v in indices):
        return "topk_indices is not a list of integers"
    if not layer.get("router_probs"):
        return "router_probs is empty"
    return None


def _number(value: object) -> float | None:
    if not is_finite_number(value):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer past any float: compared as infinity, so every check on it fails
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]


def _as_float(value: Any) -> float:
    """A number already checked by ``_number``: its float, or ±infinity past the float range."""
    number = _number(value)
    assert number is not None
    return number


def view_of_dict(event: object, position: int, line: int | None) -> EventView:
    """A view of a possibly schema-invalid event: only type-sound parts are kept."""
    data = event if isinstance(event, dict) else {}
    token_index = data.get("token_index")
    timing_obj = data.get("timing_ms")
    timing: tuple[float, float, float] | None = None
    if isinstance(timing_obj, dict):
        parts = [_number(timing_obj.get(k)) for k in ("decode_start", "decode_end", "decode_duration")]
        if all(p is not None for p in parts):
            timing = (parts[0], parts[1], parts[2])  # type: ignore[assignment]
    layers_obj = data.get("layers")
    layer_indices: list[object] = []
    layers: list[Layer] = []
    unsound: list[tuple[object, str]] = []
    if isinstance(layers_obj, list):
        for item in layers_obj:
            if not isinstance(item, dict):
                layer_indices.append(None)
                continue
            layer_indices.append(item.get("layer_index"))
            problem = _layer_problem(item)
            if problem is not None:
                unsound.append((item.get("layer_index"), problem))
                continue
            layers.append(
                Layer(
                    layer_index=item["layer_index"],
                    layer_kind=item.get("layer_kind"),  # type: ignore[arg-type]
                    num_total_experts=item["num_total_experts"],
                    num_active_experts=item["num_active_experts"],
                    router_probs=[_as_float(v) for v in item["router_probs"]],
                    topk_indices=list(item["topk_indices"]),
                    topk_probs=[_as_float(v) for v in item["topk_probs"]],
                    entropy=_as_float(item["entropy"]),
                    normalized_entropy=_as_float(item["normalized_entropy"]),
                    top1_prob=_as_float(item["top1_prob"]),
                    top1_top2_margin=_as_float(item["top1_top2_margin"]),
                )
            )
    run_id = data.get("run_id")
    version = data.get("schema_version")
    return EventView(
        position=position,
        line=line,
        token_index=token_index if _is_int(token_index) else None,
        run_id=run_id if isinstance(run_id, str) else None,
        schema_version=version if isinstance(version, str) else None,
        timing=timing,
        layer_indices=layer_indices,
        layers=layers,
        unsound_layers=unsound,
    )
