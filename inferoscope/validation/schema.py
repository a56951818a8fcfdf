"""Reference schema verdict: the ``jsonschema`` package over the canonical schema files.

Two contract rules are stricter than jsonschema's defaults: an integer is never a float
(``0.0`` is not an integer) and ``date-time`` is strict RFC 3339. Every problem is
reported, each as a ``schema_violation`` with its JSON path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaError

from .issues import Location, ValidationIssue
from .rfc3339 import is_rfc3339_date_time
from .schema_files import load_schema

SCHEMA_VIOLATION = "schema_violation"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _is_integer(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_TYPE_CHECKER = Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
_FORMAT_CHECKER = FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time")(is_rfc3339_date_time)
_StrictValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, type_checker=_TYPE_CHECKER
)


@cache
def reference_validator(artifact: str) -> Draft202012Validator:
    """The cached jsonschema validator of one artifact kind."""
    validator: Draft202012Validator = _StrictValidator(load_schema(artifact), format_checker=_FORMAT_CHECKER)
    return validator


#: one schema problem: the JSON path inside the document and what is wrong there
Problem = tuple[tuple[Any, ...], str]


def schema_problems(instance: Any, artifact: str) -> list[Problem]:
    """Every schema problem of ``instance``, each once, in a fixed order (the reference verdict)."""
    seen: set[Problem] = set()
    problems: list[Problem] = []
    for error in sorted(reference_validator(artifact).iter_errors(instance), key=_error_order):
        for path, text in _describe(error):
            problem = (tuple(path), text)
            if problem not in seen:  # jsonschema raises one "required" error per missing key
                seen.add(problem)
                problems.append(problem)
    return problems


def issues_of(
    problems: list[Problem], instance: Any, *, name: str, scope: str, location: Location
) -> list[ValidationIssue]:
    """Located ``schema_violation`` issues for ``problems``; ``name`` prefixes paths (``raw_events[3]``)."""
    return [
        ValidationIssue(
            scope=scope,
            code=SCHEMA_VIOLATION,
            message=f"{name}{_dotted(path)} {text}",
            location=_with_path(location, path, instance),
        )
        for path, text in problems
    ]


def schema_issues(
    instance: Any,
    artifact: str,
    *,
    name: str,
    scope: str,
    location: Location,
) -> list[ValidationIssue]:
    """Every schema problem of ``instance``, located; ``name`` prefixes paths (``raw_events[3]``)."""
    return issues_of(schema_problems(instance, artifact), instance, name=name, scope=scope, location=location)


ARTIFACTS = ("manifest", "raw_event", "layout", "derived_event", "motif_ledger", "contingency")


def validate_artifact_schema(artifact_name: str, payload: Any, *, location: str | None = None) -> list[str]:
    """Every schema problem of one artifact as text (``manifest.seed must have schema type ...``).

    The original library's function: ``location`` prefixes each path (default: the artifact
    name). The located form is :func:`schema_issues`.
    """
    if artifact_name not in ARTIFACTS:
        raise ValueError(
            f"unsupported artifact schema {artifact_name!r}; expected one of: {', '.join(sorted(ARTIFACTS))}"
        )
    name = location or artifact_name
    return [
        issue.message
        for issue in schema_issues(
            payload, artifact_name, name=name, scope=artifact_name, location=Location()
        )
    ]


def __getattr__(name: str) -> Any:
    # the bundle-level function lives with the other in-memory validators (which import this module)
    if name == "validate_run_bundle_schema":
        from .in_memory import validate_run_bundle_schema

        return validate_run_bundle_schema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_schema_valid(instance: Any, artifact: str) -> bool:
    return bool(reference_validator(artifact).is_valid(instance))


def _error_order(error: SchemaError) -> tuple[str, str]:
    return (json.dumps(list(error.absolute_path), default=str), str(error.validator))


def _describe(error: SchemaError) -> Iterable[tuple[Sequence[Any], str]]:
    path = list(error.absolute_path)
    keyword = error.validator
    value: Any = error.validator_value
    instance: Any = error.instance
    if keyword == "required" and isinstance(instance, dict):
        for key in value:
            if key not in instance:
                yield [*path, key], "is required"
        return
    if keyword == "additionalProperties" and isinstance(instance, dict):
        schema: Any = error.schema
        allowed = schema.get("properties", {})
        for key in sorted(k for k in instance if k not in allowed):
            yield [*path, key], "is not allowed by the schema"
        return
    yield path, _keyword_text(str(keyword), value)


def _keyword_text(keyword: str, value: Any) -> str:
    texts = {
        "type": lambda: f"must have schema type {value!r}",
        "const": lambda: f"must equal {value!r}",
        "enum": lambda: f"must be one of {value!r}",
        "minimum": lambda: f"must be >= {value}",
        "maximum": lambda: f"must be <= {value}",
        "minLength": lambda: f"must have length >= {value}",
        "minItems": lambda: f"must contain at least {value} item(s)",
        "format": lambda: f"must match format {value!r}",
    }
    return texts.get(keyword, lambda: f"fails the schema keyword {keyword!r}")()


def _dotted(path: Sequence[Any]) -> str:
    out = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.match(str(part)):
            out.append(f".{part}")
        else:
            out.append(f"[{json.dumps(str(part))}]")
    return "".join(out)


def _with_path(location: Location, path: Sequence[Any], instance: Any) -> Location:
    """Add the JSON path, and for a raw event the layer_index and expert it points into."""
    layer_index, expert_index = location.layer_index, location.expert_index
    if len(path) >= 2 and path[0] == "layers" and isinstance(path[1], int):
        layers = instance.get("layers") if isinstance(instance, dict) else None
        if isinstance(layers, list) and path[1] < len(layers) and isinstance(layers[path[1]], dict):
            candidate = layers[path[1]].get("layer_index")
            if isinstance(candidate, int) and not isinstance(candidate, bool):
                layer_index = candidate
        if len(path) >= 4 and path[2] == "router_probs" and isinstance(path[3], int):
            expert_index = path[3]
    return Location(
        file=location.file,
        line=location.line,
        token_index=location.token_index,
        layer_index=layer_index,
        expert_index=expert_index,
        json_path="$" + _dotted(path),
    )
