"""A score request parsed and checked in one pass: msgspec decodes the JSON body straight into typed Structs.

The Structs are the served OpenAPI description's rules (:func:`stream.scoring.http.openapi_spec`),
with this server's limits as the arrays' ``max_length`` (the spec's ``maxItems``): an
optional field given as null is as if left out. A body they refuse is explained by
:func:`_explain`, which walks it as plain JSON and names the first problem's field in the
API's own words (a 413 for a limit); what they accept goes to the scorer as it was decoded,
no copy (a 1000-candidate request has thousands of features). The streaming scorer's
Avro-decoded requests go through the same Structs with :func:`msgspec.convert`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from stream.config import ServingSettings
from stream.errors import GlmixError
from stream.scoring.scorer import Exploration

OPENAPI = json.loads(resources.files("stream.scoring").joinpath("openapi.json").read_text())
"""The API as the package describes it; a server serves :func:`~stream.scoring.http.openapi_spec` of its own settings."""

_FIELDS = OPENAPI["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
MAX_ID_CHARS = int(_FIELDS["member_id"]["maxLength"])
MAX_VALUE = float(_FIELDS["member_features"]["additionalProperties"]["items"]["properties"]["value"]["maximum"])
MAX_WIDTH = float(_FIELDS["exploration"]["properties"]["width"]["maximum"])  # a few standard deviations is typical
MAX_SEED = int(_FIELDS["exploration"]["properties"]["seed"]["maximum"])

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]


class InvalidRequest(GlmixError):
    """A score request that breaks the API's schema or limits; ``field`` is a JSON path (None: not JSON at all)."""

    def __init__(self, field: str | None, problem: str, status: int = 400) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem
        self.status = status


class Feature(Struct, frozen=True, gc=False):
    """One name–term–value feature of a request; it also reads like the dict fastavro decodes (``f["name"]``,
    ``f.get("term")``), so the feature transforms take it as they take a decoded record's."""

    name: Id
    term: Annotated[str, Meta(max_length=MAX_ID_CHARS)] = ""
    value: Annotated[float, Meta(ge=-MAX_VALUE, le=MAX_VALUE)] = 1.0  # larger values would only make margins inf

    def __getitem__(self, key: str) -> Any:
        if key not in self.__struct_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key``, or ``default`` if a feature has no such field."""
        return getattr(self, key) if key in self.__struct_fields__ else default


class ExplorationBody(Struct, forbid_unknown_fields=True, gc=False):
    """The request's ``exploration`` object as sent (null seed and width: left out)."""

    policy: Literal["thompson", "ucb"]
    seed: Annotated[int, Meta(ge=0, le=MAX_SEED)] | None = None
    width: Annotated[float, Meta(ge=0, le=MAX_WIDTH)] | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """A checked request: the member, their feature bags, the candidates, context and top_k.

    ``candidates`` are typed records with ``item_id`` and ``features`` (None: the item
    catalog's), ``member_features`` bags of :class:`Feature`.
    """

    member_id: str
    member_features: dict[str, list[Feature]]
    candidates: list[Any]
    context: dict[str, str]
    top_k: int | None
    exploration: Exploration | None = None


@lru_cache(maxsize=16)
def _body_type(max_candidates: int, max_features_per_bag: int) -> type[Struct]:
    """The request's Struct with these limits (built once per server)."""
    bags = dict[str, Annotated[list[Feature], Meta(max_length=max_features_per_bag)]] | None  # type: ignore[valid-type]
    candidate = msgspec.defstruct("Candidate", [("item_id", Id), ("features", bags, None)], frozen=True, gc=False)
    return msgspec.defstruct(
        "ScoreRequestBody",
        [
            ("member_id", Id),
            ("candidates", Annotated[list[candidate], Meta(min_length=1, max_length=max_candidates)]),  # type: ignore[valid-type]
            ("member_features", bags, None),
            ("context", dict[str, str] | None, None),
            ("top_k", Annotated[int, Meta(ge=1)] | None, None),
            ("exploration", ExplorationBody | None, None),
        ],
        forbid_unknown_fields=True,
        gc=False,
    )


@lru_cache(maxsize=16)
def _decoder(max_candidates: int, max_features_per_bag: int) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(_body_type(max_candidates, max_features_per_bag))


def decode_score_request(raw: bytes, limits: ServingSettings) -> ScoreRequest:
    """The checked request of a JSON body, or :class:`InvalidRequest` for the first problem found.

    Strict JSON: UTF-8, no NaN or Infinity literals.
    """
    try:
        body = _decoder(limits.max_candidates, limits.max_features_per_bag).decode(raw)
    except msgspec.ValidationError as exc:
        raise _explained(raw, exc, limits) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(None, f"body is not valid JSON: {exc}") from None
    return _request(body, limits)


def parse_score_request(body: Any, limits: ServingSettings) -> ScoreRequest:
    """The checked request of an already decoded body (a streaming request's record), by the same rules."""
    try:
        typed = msgspec.convert(body, _body_type(limits.max_candidates, limits.max_features_per_bag))
    except msgspec.ValidationError as exc:
        raise _explained(body, exc, limits) from None
    return _request(typed, limits)


def _request(body: Any, limits: ServingSettings) -> ScoreRequest:
    exploration = None
    if body.exploration is not None:
        if not limits.exploration:
            raise InvalidRequest(
                "$.exploration", "exploration is off on this server (serving.exploration): leave it out"
            )
        e = body.exploration
        exploration = Exploration(e.policy, e.seed, 1.0 if e.width is None else e.width)
    return ScoreRequest(
        body.member_id,
        body.member_features or {},
        body.candidates,
        body.context or {},
        body.top_k,
        exploration,
    )


def _explained(body: bytes | Any, refused: msgspec.ValidationError, limits: ServingSettings) -> InvalidRequest:
    """The first problem of a body the Structs refused, in the API's words; msgspec's own if the walk finds none."""
    try:
        plain = msgspec.json.decode(body) if isinstance(body, bytes) else body
    except msgspec.DecodeError as exc:  # the typed decode stopped at a wrong type before reaching invalid JSON
        return InvalidRequest(None, f"body is not valid JSON: {exc}")
    try:
        _explain(plain, limits)
    except InvalidRequest as problem:
        return problem
    message, _, at = str(refused).rpartition(" - at `")
    return InvalidRequest(at.rstrip("`") if message else "$", message or str(refused))


def _explain(body: Any, limits: ServingSettings) -> None:
    """Raise :class:`InvalidRequest` for the first problem of a plain JSON ``body``, checked in field order."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("$", "the body must be a JSON object")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise InvalidRequest(f"$.{unknown[0]}", "unknown field")
    _string(body.get("member_id"), "$.member_id")
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise InvalidRequest("$.candidates", "must be a non-empty array")
    if len(candidates) > limits.max_candidates:
        raise InvalidRequest(
            "$.candidates", f"{len(candidates)} candidates, more than the limit of {limits.max_candidates}", status=413
        )
    for i, candidate in enumerate(candidates):
        if not isinstance(candidate, Mapping):
            raise InvalidRequest(f"$.candidates[{i}]", "must be an object {item_id, features}")
        _string(candidate.get("item_id"), f"$.candidates[{i}].item_id")
        _explain_bags(candidate.get("features"), f"$.candidates[{i}].features", limits)
    context = body.get("context")
    if context is not None and not (
        isinstance(context, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())
    ):
        raise InvalidRequest("$.context", "must be an object of strings")
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InvalidRequest("$.top_k", "must be an integer >= 1")
    _explain_bags(body.get("member_features"), "$.member_features", limits)
    _explain_exploration(body.get("exploration"), limits)


def _string(value: Any, field: str, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidRequest(field, "must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequest(field, f"longer than {MAX_ID_CHARS} characters")


def _explain_bags(value: Any, field: str, limits: ServingSettings) -> None:
    """The feature bags of the member or of one candidate (None: none, or the item catalog's)."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidRequest(field, "must be an object of feature bags")
    most = limits.max_features_per_bag
    for bag, items in value.items():
        here = f"{field}.{bag}"
        if not isinstance(items, list):
            raise InvalidRequest(here, "must be an array of {name, term, value}")
        if len(items) > most:
            raise InvalidRequest(here, f"has {len(items)} features, more than the limit of {most}", status=413)
        for position, item in enumerate(items):
            _explain_feature(item, f"{here}[{position}]")


def _explain_feature(item: Any, here: str) -> None:
    if not isinstance(item, Mapping):
        raise InvalidRequest(here, "must be an object {name, term, value}")
    number = item.get("value", 1.0)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise InvalidRequest(f"{here}.value", "must be a number")
    if abs(number) > MAX_VALUE or not math.isfinite(number):  # an int too large for a float compares exactly
        raise InvalidRequest(f"{here}.value", f"must be finite and at most {MAX_VALUE:g} in size")
    _string(item.get("name"), f"{here}.name")
    _string(item.get("term", ""), f"{here}.term", allow_empty=True)


def _explain_exploration(value: Any, limits: ServingSettings) -> None:
    if value is None:
        return
    if not limits.exploration:
        raise InvalidRequest("$.exploration", "exploration is off on this server (serving.exploration): leave it out")
    if not isinstance(value, Mapping) or set(value) - set(ExplorationBody.__struct_fields__):
        raise InvalidRequest("$.exploration", "must be an object {policy, seed, width}")
    if value.get("policy") not in ("thompson", "ucb"):
        raise InvalidRequest(
            "$.exploration", f"exploration policy must be 'thompson' or 'ucb', got {value.get('policy')!r}"
        )
    seed, width = value.get("seed"), value.get("width")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise InvalidRequest("$.exploration.seed", "must be an integer in [0, 2^63)")
    if width is not None and (
        isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 <= width <= MAX_WIDTH
    ):
        raise InvalidRequest("$.exploration.width", f"must be a number in [0, {MAX_WIDTH:g}]")
