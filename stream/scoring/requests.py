"""Checking a JSON score request before it reaches the scorer: every problem is a 400 naming the field.

The rules are the served OpenAPI description's (:func:`stream.scoring.http.openapi_spec`): an optional
field given as null is as if left out; the limits over which a request gets a 413 are its ``maxItems``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream.config import ServingSettings
from stream.errors import GlmixError
from stream.scoring.scorer import Exploration

MAX_ID_CHARS = 256
MAX_VALUE = 1e12  # larger feature values would only turn margins into inf
MAX_WIDTH = 1000.0  # UCB widths are a few standard deviations; far larger ones would only overflow margins


class InvalidRequest(GlmixError):
    """A score request that breaks the API's schema or limits; ``field`` is a JSON path."""

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.status = status


@dataclass(frozen=True)
class ScoreRequest:
    """A checked request: the member, their feature bags, the candidates, context and top_k."""

    member_id: str
    member_features: dict[str, list[dict[str, Any]]]
    candidates: list[dict[str, Any]]
    context: dict[str, str]
    top_k: int | None
    exploration: Exploration | None = None


def _string(value: Any, field: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidRequest(field, "must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequest(field, f"longer than {MAX_ID_CHARS} characters")
    return value


def _bags(value: Any, limits: ServingSettings, candidate: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The feature bags of the member (``candidate`` None) or of one candidate, checked.

    Valid bags are passed through as they are: no copy, and no JSON path is built unless
    there is a problem to name (a 1000-candidate request has thousands of bags).
    """
    if value is None:
        return {}
    if type(value) is not dict:
        raise InvalidRequest(_bags_field(candidate), "must be an object of feature bags")
    most = limits.max_features_per_bag
    for bag, items in value.items():
        if type(items) is not list or len(items) > most:
            _raise_bag_problem(items, f"{_bags_field(candidate)}.{bag}", most)
        for item in items:  # the fast check, inline: plain types, sizes, a finite value (NaN fails)
            if type(item) is dict:
                name, term, number = item.get("name"), item.get("term", ""), item.get("value", 1.0)
                if (
                    type(name) is str
                    and 0 < len(name) <= MAX_ID_CHARS
                    and type(term) is str
                    and len(term) <= MAX_ID_CHARS
                    and type(number) in (int, float)
                    and -MAX_VALUE <= number <= MAX_VALUE
                ):
                    continue
            position = next(i for i, x in enumerate(items) if x is item)
            _raise_item_problem(item, f"{_bags_field(candidate)}.{bag}[{position}]")
    return value


def _bags_field(candidate: int | None) -> str:
    return "$.member_features" if candidate is None else f"$.candidates[{candidate}].features"


def _raise_bag_problem(items: Any, here: str, most: int) -> None:
    if not isinstance(items, list):
        raise InvalidRequest(here, "must be an array of {name, term, value}")
    raise InvalidRequest(here, f"has {len(items)} features, more than the limit of {most}", status=413)


def _raise_item_problem(item: Any, here: str) -> None:
    """Say exactly what is wrong with an item the fast check refused."""
    if not isinstance(item, Mapping):
        raise InvalidRequest(here, "must be an object {name, term, value}")
    number = item.get("value", 1.0)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise InvalidRequest(f"{here}.value", "must be a number")
    if not math.isfinite(number) or abs(number) > MAX_VALUE:
        raise InvalidRequest(f"{here}.value", f"must be finite and at most {MAX_VALUE:g} in size")
    _string(item.get("name"), f"{here}.name")
    _string(item.get("term", ""), f"{here}.term", allow_empty=True)
    raise InvalidRequest(here, "must be an object {name, term, value} of plain JSON types")


def parse_score_request(body: Any, limits: ServingSettings) -> ScoreRequest:
    """The checked request, or :class:`InvalidRequest` for the first problem found."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("$", "the body must be a JSON object")
    unknown = sorted(set(body) - {"member_id", "member_features", "candidates", "context", "top_k", "exploration"})
    if unknown:
        raise InvalidRequest(f"$.{unknown[0]}", "unknown field")
    member_id = _string(body.get("member_id"), "$.member_id")
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise InvalidRequest("$.candidates", "must be a non-empty array")
    if len(candidates) > limits.max_candidates:
        raise InvalidRequest(
            "$.candidates", f"{len(candidates)} candidates, more than the limit of {limits.max_candidates}", status=413
        )
    for i, candidate in enumerate(candidates):  # valid candidates are passed through as they are
        if type(candidate) is not dict:
            raise InvalidRequest(f"$.candidates[{i}]", "must be an object {item_id, features}")
        item_id = candidate.get("item_id")
        if type(item_id) is not str or not 0 < len(item_id) <= MAX_ID_CHARS:
            _string(item_id, f"$.candidates[{i}].item_id")
        _bags(candidate.get("features"), limits, i)  # absent: the item's features from the items topic
    context = body.get("context")
    if context is None:
        context = {}
    if not isinstance(context, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise InvalidRequest("$.context", "must be an object of strings")
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InvalidRequest("$.top_k", "must be an integer >= 1")
    return ScoreRequest(
        member_id,
        _bags(body.get("member_features"), limits),
        candidates,
        dict(context),
        top_k,
        _exploration(body.get("exploration"), limits),
    )


def _exploration(value: Any, limits: ServingSettings) -> Exploration | None:
    if value is None:
        return None
    if not limits.exploration:
        raise InvalidRequest("$.exploration", "exploration is off on this server (serving.exploration): leave it out")
    if not isinstance(value, Mapping) or set(value) - {"policy", "seed", "width"}:
        raise InvalidRequest("$.exploration", "must be an object {policy, seed, width}")
    seed, width = value.get("seed"), value.get("width")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidRequest("$.exploration.seed", "must be an integer in [0, 2^63)")
    if width is None:
        width = 1.0
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 <= width <= MAX_WIDTH:
        raise InvalidRequest("$.exploration.width", f"must be a number in [0, {MAX_WIDTH:g}]")
    try:
        return Exploration(value.get("policy"), seed, float(width))  # type: ignore[arg-type]  # checked by Exploration
    except ValueError as exc:
        raise InvalidRequest("$.exploration", str(exc)) from None
