"""Find a model's router modules and the MoE layer each belongs to.

A transformers 5 MoE model declares its router class in
``_can_record_outputs["router_logits"]``; every module of that class is a router, and its
decoder layer index comes from its name (``model.layers.7.mlp.gate`` is layer 7), so dense
layers interleaved with MoE layers keep their true indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import CaptureError

_LAYER_IN_NAME = re.compile(r"(?:^|\.)(?:layers|blocks|h)\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class RouterSite:
    """One router module and the decoder layer it routes for."""

    layer_index: int
    name: str
    module: Any

    @property
    def site(self) -> str:
        """Where in its decoder layer the router sits: "attention" for a mixture of attention
        heads (JetMoE's MoA), else "mlp"."""
        parts = self.name.split(".")
        return (
            "attention"
            if any(p in ("self_attention", "self_attn", "attention", "attn") for p in parts)
            else "mlp"
        )

    @property
    def hashed(self) -> bool:
        """A router that picks experts by a table of the token id (DeepSeek-V4's hash layers)."""
        return hasattr(self.module, "tid2eid") or type(self.module).__name__.endswith("HashRouter")


def _undeclared_router(module: Any) -> bool:
    """Routing modules a model does not declare in ``_can_record_outputs`` (hash routers)."""
    return hasattr(module, "tid2eid") or type(module).__name__.endswith("HashRouter")


def _declared_router_classes(model: Any) -> list[type]:
    classes: list[type] = []
    for candidate in (model, getattr(model, "model", None), getattr(model, "base_model", None)):
        recorders = getattr(type(candidate), "_can_record_outputs", None) if candidate is not None else None
        if not isinstance(recorders, dict):
            continue
        spec = recorders.get("router_logits")
        for item in spec if isinstance(spec, (list, tuple)) else [spec]:
            target = getattr(item, "target_class", None) or (item if isinstance(item, type) else None)
            if isinstance(target, type) and target not in classes:
                classes.append(target)
    return classes


def find_routers(model: Any) -> list[RouterSite]:
    """Every router of ``model`` in layer order; CaptureError if it has none."""
    classes = _declared_router_classes(model)
    sites: list[RouterSite] = []
    for name, module in model.named_modules():
        if classes:
            is_router = isinstance(module, tuple(classes)) or _undeclared_router(module)
        else:  # no declaration: fall back to the naming convention of MoE routers
            is_router = type(module).__name__.endswith(("TopKRouter", "TopkRouter"))
        if not is_router:
            continue
        match = _LAYER_IN_NAME.search(name)
        if match is None:
            raise CaptureError(f"router module {name!r} is not inside a numbered decoder layer")
        sites.append(RouterSite(int(match.group(1)), name, module))
    if not sites:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise CaptureError(
            f"no Mixture-of-Experts router found in this model ({kind}); "
            "inferoscope captures MoE models (OLMoE, Mixtral, Qwen-MoE, ...)"
        )
    sites.sort(key=lambda site: (site.layer_index, site.site != "mlp", site.name))
    seen = [(site.layer_index, site.site) for site in sites]
    if len(set(seen)) != len(seen):
        raise CaptureError(
            "more than one router at one place of a decoder layer; cannot tell which one routes"
        )
    _no_layer_left_out(model, {layer for layer, _site in seen})
    return sites


def _no_layer_left_out(model: Any, routed: set[int]) -> None:
    """A decoder layer whose MoE block has experts but no router we found would be silently
    missing from the bundle: refuse, naming it."""
    for name, module in model.named_modules():
        if not name.endswith(".experts") or not list(module.parameters(recurse=True)):
            continue
        match = _LAYER_IN_NAME.search(name + ".")
        if match is not None and int(match.group(1)) not in routed:
            raise CaptureError(
                f"decoder layer {match.group(1)} has experts ({name}) but no router inferoscope can "
                "record; its routing would be missing from the bundle, so the model is refused"
            )
