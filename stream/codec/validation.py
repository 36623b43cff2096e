"""Checks that decoded records make sense beyond their schema (ids present, numbers finite).

Avro guarantees shape, not meaning: an impression with an empty member id or a NaN
feature value decodes fine. Each check returns the reason a record must be
dead-lettered, or ``None`` when it is valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def impression_problem(record: Mapping[str, Any]) -> str | None:
    """Why an Impression is invalid (missing ids, non-finite feature values), or ``None``."""
    for key in ("impression_id", "member_id", "item_id"):
        if not record.get(key):
            return f"Impression has an empty {key}"
    for bag, features in record.get("features", {}).items():
        for feature in features:
            if not math.isfinite(feature["value"]):
                return f"Impression feature {bag}/{feature['name']}:{feature['term']} is {feature['value']}"
    return None


def interaction_problem(record: Mapping[str, Any]) -> str | None:
    """Why an Interaction is invalid (missing ids), or ``None``."""
    for key in ("impression_id", "member_id"):
        if not record.get(key):
            return f"Interaction has an empty {key}"
    return None
