"""Router hooks, scoped to a ``with`` block and always removed, also on error.

Router hooks only keep a reference to each router's output; a hook on the whole model
stamps each forward pass's start and end and moves the last position of every layer to the
CPU in one copy (one device sync per step, not per layer). Nothing is encoded here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from .errors import CaptureError
from .routers import RouterSite, find_routers


@dataclass(slots=True)
class StepRouting:
    """One forward pass: per MoE layer, the last position's logits and the router's choice."""

    logits: np.ndarray  # [L, E] float32, as the router computed them
    selected: np.ndarray  # [L, k] int64, the experts the router returned (its order)
    start_ms: float
    end_ms: float
    positions: int  # rows routed in this pass (the prompt length for prefill, else 1)
    prefill_logits: np.ndarray | None = None  # [L, positions, E] for a prefill pass
    prefill_selected: np.ndarray | None = None  # [L, positions, k]
    weights: np.ndarray | None = None  # [L, k] the mixing weights the router returned (None: it returns none)
    prefill_weights: np.ndarray | None = None  # [L, positions, k]


#: the MoE block method that picks experts from a logits-only router's output (DBRX)
BLOCK_ROUTING = "route_tokens_to_experts"


@dataclass(slots=True)
class RouterCapture:
    """``with RouterCapture(model) as capture: model.generate(...)`` fills ``capture.steps``."""

    model: Any
    sites: list[RouterSite] = field(default_factory=list)
    steps: list[StepRouting] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)
    _outputs: dict[int, Any] = field(default_factory=dict)
    on_step: Callable[[int], None] | None = None  # called with the number of steps so far
    _origin: float = 0.0
    _start: float = 0.0

    _top_k: dict[int, int] = field(default_factory=dict)
    _routed: dict[int, Any] = field(default_factory=dict)  # block-level routing outputs (DBRX)
    _wrapped: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sites:
            self.sites = find_routers(self.model)
        for position, site in enumerate(self.sites):
            k = getattr(site.module, "top_k", None)
            if isinstance(k, int) and not isinstance(k, bool) and k > 0:
                self._top_k[position] = k

    @property
    def layer_indices(self) -> list[int]:
        return [site.layer_index for site in self.sites]

    def __enter__(self) -> RouterCapture:
        self._origin = time.perf_counter()
        try:
            for position, site in enumerate(self.sites):
                self._handles.append(site.module.register_forward_hook(self._router_hook(position)))
                self._watch_block_routing(site, position)
            self._handles.append(self.model.register_forward_pre_hook(self._before_step))
            self._handles.append(self.model.register_forward_hook(self._after_step))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Detach every hook this capture attached (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._outputs.clear()
        for block in self._wrapped:
            block.__dict__.pop(BLOCK_ROUTING, None)  # the class's own method again
        self._wrapped.clear()

    def _watch_block_routing(self, site: RouterSite, position: int) -> None:
        """A router that returns logits only (DBRX) leaves the choice to its MoE block's
        ``route_tokens_to_experts``: that method's own output (weights, indices) is recorded, by
        wrapping it on this one block instance for the capture's duration."""
        if "." not in site.name:
            return
        block = self.model.get_submodule(site.name.rsplit(".", 1)[0])
        original = getattr(block, BLOCK_ROUTING, None)
        if original is None or BLOCK_ROUTING in block.__dict__:
            return

        def routed(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self._routed[position] = result
            return result

        block.__dict__[BLOCK_ROUTING] = routed
        self._wrapped.append(block)

    def _router_hook(self, position: int) -> Any:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            self._outputs[position] = output

        return keep

    def _before_step(self, _module: Any, _args: Any) -> None:
        self._outputs.clear()
        self._routed.clear()
        self._start = time.perf_counter()

    def _joined(self, position: int) -> Any:
        """The router's output, with its block's (weights, indices) where the block chose."""
        output = self._outputs[position]
        routed = self._routed.get(position)
        if routed is None:
            return output
        own = output if isinstance(output, (tuple, list)) else (output,)
        return (*own, *(routed if isinstance(routed, (tuple, list)) else (routed,)))

    def _after_step(self, _module: Any, _args: Any, _output: Any) -> None:
        import torch

        missing = [site.layer_index for i, site in enumerate(self.sites) if i not in self._outputs]
        if missing:
            raise CaptureError(
                f"the routers of layers {missing} did not run in this forward pass "
                "(a fused kernel may bypass them); nothing can be recorded faithfully"
            )
        parts = [
            split_router_output(self._joined(i), site.layer_index, self._top_k.get(i))
            for i, site in enumerate(self.sites)
        ]
        logits = [part[0] for part in parts]
        weights = [part[1] for part in parts]
        selected = [part[2] for part in parts]
        rows = logits[0].shape[0]
        if any(t.shape[0] != rows for t in logits):
            raise CaptureError("routers saw different numbers of positions in one forward pass")
        has_weights = all(w is not None for w in weights)
        prefill = not self.steps
        with torch.no_grad():
            # logits, weights and indices travel together: one copy to the CPU (one device sync)
            # per step; indices are exact in float32 far beyond any expert count
            rows_wanted = slice(None) if prefill else slice(-1, None)
            columns = [torch.stack([t[rows_wanted] for t in logits]).float()]
            if has_weights:
                columns.append(torch.stack([t[rows_wanted] for t in weights]).float())  # type: ignore[index]
            columns.append(torch.stack([t[rows_wanted] for t in selected]).float())
            host = torch.cat(columns, dim=-1).cpu().numpy()
        experts, k = logits[0].shape[-1], selected[0].shape[-1]
        full_logits = host[..., :experts]
        full_weights = host[..., experts : experts + k] if has_weights else None
        full_selected = host[..., host.shape[-1] - k :].astype(np.int64)
        end = time.perf_counter()
        self.steps.append(
            StepRouting(
                logits=full_logits[:, -1],
                selected=full_selected[:, -1],
                start_ms=(self._start - self._origin) * 1000.0,
                end_ms=(end - self._origin) * 1000.0,
                positions=rows,
                prefill_logits=full_logits if prefill else None,
                prefill_selected=full_selected if prefill else None,
                weights=None if full_weights is None else full_weights[:, -1],
                prefill_weights=full_weights if prefill else None,
            )
        )
        self._outputs.clear()
        if self.on_step is not None:
            self.on_step(len(self.steps))


def split_router_output(
    output: Any, layer_index: int, top_k: int | None = None
) -> tuple[Any, Any | None, Any]:
    """(logits, mixing weights or None, selected indices) from a router's output, whatever the
    tuple order: the 2-D integer tensor holds the indices, the 2-D float tensor as wide as them the
    weights, the widest 2-D float tensor with as many rows the logits over every expert.

    A router that returns no indices but a score matrix that is zero outside its choice (Llama-4:
    the sigmoid of the top-k logits scattered over -inf) gives them by that matrix: the selected
    experts are the top-k of its logits, proven to be exactly where the matrix is not zero.
    """
    import torch

    grouped = _grouped_by_expert(output, top_k)
    if grouped is not None:
        return grouped
    tensors = [
        t for t in (output if isinstance(output, (tuple, list)) else (output,)) if isinstance(t, torch.Tensor)
    ]
    integer = [t for t in tensors if not t.is_floating_point() and t.dim() == 2]
    floating = [t for t in tensors if t.is_floating_point() and t.dim() == 2]
    if not integer and len(floating) >= 2 and top_k:
        return _scattered(floating, layer_index, top_k)
    if not integer or not floating:
        raise CaptureError(
            f"the router of layer {layer_index} returns no expert indices (output shapes "
            f"{[tuple(t.shape) for t in tensors]}); its family selects experts elsewhere and cannot "
            "be recorded faithfully"
        )
    selected = integer[0]
    rows = [t for t in floating if t.shape[0] == selected.shape[0]]
    if not rows:
        raise CaptureError(
            f"unexpected router output shapes in layer {layer_index}: {[tuple(t.shape) for t in tensors]}"
        )
    logits = max(rows, key=lambda t: t.shape[-1])  # all experts, not the k weights
    narrow = [t for t in rows if t is not logits and tuple(t.shape) == tuple(selected.shape)]
    return logits, (narrow[0] if narrow else None), selected


def _grouped_by_expert(output: Any, top_k: int | None) -> tuple[Any, Any, Any] | None:
    """JetMoE's gating output, sorted by expert: (positions in the flattened top-k, token of each,
    gate of each, count per expert, logits). Laid back out per token, in the router's own top-k
    order (position ``token * k + slot``): a re-layout of its output, nothing recomputed."""
    import torch

    if not isinstance(output, (tuple, list)) or len(output) != 5 or not top_k:
        return None
    positions, _tokens, gates, sizes, logits = output
    tensors = (positions, gates, logits)
    if not all(isinstance(t, torch.Tensor) for t in tensors) or logits.dim() != 2 or positions.dim() != 1:
        return None
    counts = torch.as_tensor(sizes, device=positions.device)
    if counts.numel() != logits.shape[-1] or int(counts.sum()) != positions.numel():
        return None
    experts = torch.repeat_interleave(torch.arange(logits.shape[-1], device=positions.device), counts)
    flat_experts = torch.empty_like(positions)
    flat_experts[positions] = experts
    flat_gates = torch.empty_like(gates)
    flat_gates[positions] = gates
    return logits, flat_gates.view(-1, top_k), flat_experts.view(-1, top_k)


def _scattered(floating: list[Any], layer_index: int, top_k: int) -> tuple[Any, Any, Any]:
    import torch

    wide = [t for t in floating if t.shape == floating[0].shape]
    if len(wide) != 2:
        raise CaptureError(f"the router of layer {layer_index} returns no expert indices")
    zeros = [int((t == 0).sum()) for t in wide]
    scattered, logits = (wide[0], wide[1]) if zeros[0] >= zeros[1] else (wide[1], wide[0])
    selected = torch.topk(logits, top_k, dim=-1).indices
    chosen = torch.zeros_like(scattered, dtype=torch.bool).scatter_(1, selected, True)
    if not torch.equal(chosen, scattered != 0):
        raise CaptureError(
            f"the router of layer {layer_index} returns no expert indices, and its score matrix is "
            "not zero exactly outside the top-k of its logits; the experts it uses cannot be read"
        )
    return logits, torch.gather(scattered, 1, selected), selected
