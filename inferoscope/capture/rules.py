"""Which declared rule a router follows, found from its own outputs and proven on every position.

The capture records what the router returned (its selected experts and mixing weights) and its
own logits. What the contract also needs is the *rule*: the score function, how the selection
follows from the scores (a bias, expert groups) and how the weights follow from them. Each
candidate rule is applied to every recorded position (prompt and generated, and any probe
positions) and kept only if it reproduces the router's selection (and weights) everywhere
within tolerance. Simple rules are tried first; none is assumed. No rule found: the capture is
refused with the reason, never written with a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..routing import Mixing, Selection, expected_weights, selection_keys, selection_violations

BIAS_NAMES = ("e_score_correction_bias", "expert_bias", "correction_bias")


@dataclass(frozen=True, slots=True)
class RouterRule:
    score_function: str  # softmax | sigmoid | sqrt_softplus | logits
    selection: Selection
    mixing: Mixing

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return score_rows(logits, self.score_function)


SCORE_FUNCTIONS = ("softmax", "sigmoid", "sqrt_softplus", "logits")


def score_rows(logits: np.ndarray, function: str) -> np.ndarray:
    """The router's scores from its logits, in float64: softmax over experts, sigmoid,
    sqrt(softplus) (DeepSeek-V4) or the logits themselves."""
    z = logits.astype(np.float64)
    if function == "logits":
        return z
    if function == "sigmoid":
        out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
        return out
    if function == "sqrt_softplus":
        root: np.ndarray = np.sqrt(np.logaddexp(0.0, z))
        return root
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    soft: np.ndarray = z / z.sum(axis=-1, keepdims=True)
    return soft


@dataclass(frozen=True, slots=True)
class RouterHints:
    """What the router module and config say (only used to choose which candidates to try)."""

    n_group: int | None
    topk_group: int | None
    scales: tuple[float, ...]
    has_bias: bool
    router_groups: bool  # the router module itself holds the group settings (it uses them)


def hints_of(module: Any, config: Any, bias: np.ndarray | None) -> RouterHints:
    def number(*names: str) -> int | None:
        for source in (module, config):
            for name in names:
                value = getattr(source, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None

    scales = [1.0]
    for source in (module, config):
        value = getattr(source, "routed_scaling_factor", None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if math.isfinite(value) and value > 0 and float(value) not in scales:
            scales.append(float(value))
    router_groups = any(hasattr(module, name) for name in ("num_group", "n_group", "topk_group"))
    return RouterHints(
        number("num_group", "n_group"), number("topk_group"), tuple(scales), bias is not None, router_groups
    )


def find_bias(module: Any, parent: Any, experts: int) -> tuple[str, np.ndarray] | None:
    """A selection bias of ``experts`` values on the router or its MoE block (by name), or None."""
    for owner in (module, parent):
        if owner is None:
            continue
        for name, tensor in [*owner.named_buffers(), *owner.named_parameters()]:
            if any(name.endswith(b) for b in BIAS_NAMES) and tensor.numel() == experts:
                return name, tensor.detach().float().reshape(experts).cpu().numpy()
    return None


def _selections(hints: RouterHints, experts: int, k: int) -> list[Selection]:
    """Candidate selection rules, the router's own declarations first: a bias it holds before
    none, expert groups it holds before none (a rule that ignores them may fit a short capture by
    luck; the one the router declares is its truth when both fit)."""
    grouped: list[Selection] = []
    n, keep = hints.n_group, hints.topk_group
    if n and keep and experts % n == 0 and keep < n and k <= keep * (experts // n):
        for group_score in ("top2_sum", "max"):
            if group_score == "top2_sum" and experts // n < 2:
                continue
            grouped.append(Selection("group_limited_topk", hints.has_bias, n, keep, group_score))
    plain = [Selection("topk", True)] if hints.has_bias else []
    plain.append(Selection("topk", False))
    if hints.has_bias:
        grouped += [Selection(s.rule, False, s.n_group, s.topk_group, s.group_score) for s in list(grouped)]
    return grouped + plain if hints.router_groups else plain + grouped


def find_rule(
    logits: np.ndarray,
    selected: np.ndarray,
    weights: np.ndarray | None,
    bias: np.ndarray | None,
    hints: RouterHints,
    tol: float,
    hashed: bool = False,
) -> RouterRule | None:
    """The first declared rule that reproduces ``selected`` on every row, preferring one whose
    mixing rule also reproduces ``weights``. A ``hashed`` router picks by token id: its selection
    is recorded as ``hash`` (not a function of the scores) and only its scores and mixing found.

    ``logits`` ``[R, E]``, ``selected`` / ``weights`` ``[R, k]``: every recorded position of one
    layer. The selection must follow exactly; a mixing rule that no candidate reproduces is
    ``unchecked`` (the recorded weights are the router's own either way).
    """
    experts, k = logits.shape[1], selected.shape[1]
    fallback: RouterRule | None = None
    selections = [Selection("hash", False)] if hashed else _selections(hints, experts, k)
    for selection in selections:
        for function in SCORE_FUNCTIONS:
            scores = score_rows(logits, function)
            if not hashed:
                keys = selection_keys(scores, bias if selection.bias else None)
                bad, _winners = selection_violations(keys, selected, selection, tol)
                if bad.any():
                    continue
            mixing = _mixing(scores, selected, weights, hints, tol, function == "logits")
            rule = RouterRule(function, selection, mixing)
            if rule.mixing.rule != "unchecked":
                return rule
            fallback = fallback or rule
    return fallback


def _mixing(
    scores: np.ndarray,
    selected: np.ndarray,
    weights: np.ndarray | None,
    hints: RouterHints,
    tol: float,
    logits: bool = False,
) -> Mixing:
    if weights is None:
        return Mixing("unchecked", 1.0, "the router returns no mixing weights")
    chosen = np.take_along_axis(scores, selected, axis=1)
    candidates = [("gather", "none"), ("renormalize", "none")]
    if logits:  # a router that selects on logits and weighs by their sigmoid or their softmax
        candidates = [("softmax_selected", "none"), ("gather", "sigmoid"), ("renormalize", "sigmoid")]
    for scale in hints.scales:
        for rule, transform in candidates:
            candidate = Mixing(rule, scale, transform=transform)
            expected = expected_weights(chosen, candidate)
            assert expected is not None
            if (np.abs(weights - expected) <= tol * np.maximum(1.0, np.abs(expected))).all():
                return candidate
    return Mixing("unchecked", 1.0, "the router's own (none of the declared rules reproduces them)")


PROBE_ROWS = 512


def probe_router(
    module: Any, parent: Any, hidden_size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
    """(logits, weights, selected) of ``PROBE_ROWS`` random positions fed straight to the router,
    or None when it cannot be called with hidden states alone (it needs token ids, say).

    A short capture can fit a wrong rule by luck (a bias that rarely changes the choice); random
    positions decide between the candidates. They only choose the declared rule: nothing from a
    probe is written to the bundle.
    """
    import inspect

    import torch

    from .hooks import split_router_output

    extra: dict[str, Any] = {}
    for name, parameter in inspect.signature(module.forward).parameters.items():
        if name in ("hidden_states", "x", "input", "hidden"):
            continue
        if "bias" in name and parent is not None:  # a selection bias the MoE block passes in
            found = find_bias(module, parent, int(getattr(module, "num_experts", 0) or 0) or -1)
            if found is None:
                return None
            parent_bias = next(
                (t for n, t in [*parent.named_buffers(), *parent.named_parameters()] if n.endswith(found[0])),
                None,
            )
            if parent_bias is None:
                return None
            extra[name] = parent_bias
        elif parameter.default is parameter.empty:
            return None
    weight = next(module.parameters(), None)
    dtype = weight.dtype if weight is not None else torch.float32
    device = weight.device if weight is not None else "cpu"
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(PROBE_ROWS, hidden_size, generator=generator).to(dtype=dtype, device=device)
    try:
        with torch.no_grad():  # .forward, not the module call: nobody's hooks see a probe
            output = module.forward(x, **extra)
        logits, weights, selected = split_router_output(output, -1, getattr(module, "top_k", None))
    except Exception:  # a router that cannot be probed this way: the recorded positions decide
        return None
    return (
        logits.float().cpu().numpy(),
        None if weights is None else weights.float().cpu().numpy(),
        selected.cpu().numpy().astype(np.int64),
    )
