"""Feature transforms of the feed relevance toolbox, applied to name–term–value bags.

Raw features are transformed once, right before they are indexed, wherever bags are
indexed: the joiner (examples for the updaters and the archive the refit reads), the
scorer, and the batch trainer's dataset builder. Updaters and the refit read features the
joiner already indexed, so every path sees the same numbers (DESIGN §8).

* ``log``: ``log1p(max(value, 0))`` — counts with a long tail.
* ``indicator``: 1 when ``value > 0``, else the feature is dropped.
* ``bucketize``: the term becomes the bucket ``[lo,hi)`` holding the value, value 1 (a
  categorical feature the model can weigh bucket by bucket).
* ``spline``: a value between knots ``k_i <= v < k_{i+1}`` becomes two features, terms
  ``k_i`` and ``k_{i+1}``, weighted ``1 - t`` and ``t``; values outside the knots clamp to the
  end knot. A linear model over these terms is a piecewise-linear function of the value.
* ``product``: a new feature ``value_a * value_b`` for every pair of occurrences of the two
  input names, term ``term_a*term_b`` (or the non-empty one), written into a named bag.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream.config import ModelSettings, TransformSettings

Bags = Mapping[str, Sequence[Any]]
NTV = dict[str, Any]


def _format_bound(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def _bucket_labels(boundaries: Sequence[float]) -> list[str]:
    edges = ["-inf", *map(_format_bound, boundaries), "inf"]
    return [f"[{lo},{hi})" for lo, hi in itertools.pairwise(edges)]


def _joined_term(head: str, tail: str) -> str:
    return f"{head}|{tail}" if head else tail


class FeatureTransforms:
    """The model spec's transforms, compiled once; :meth:`apply` rewrites one row's bags.

    >>> from stream.config import TransformSettings
    >>> t = FeatureTransforms({"applicants": TransformSettings(kind="bucketize", boundaries=(10.0, 100.0))})
    >>> t.apply({"job": [{"name": "applicants", "term": "", "value": 42.0}]})
    {'job': [{'name': 'applicants', 'term': '[10,100)', 'value': 1.0}]}
    """

    def __init__(self, transforms: Mapping[str, TransformSettings]) -> None:
        self._unary = {name: t for name, t in transforms.items() if t.kind != "product"}
        self._products = [(name, t) for name, t in transforms.items() if t.kind == "product"]
        self._labels = {name: _bucket_labels(t.boundaries) for name, t in self._unary.items() if t.kind == "bucketize"}
        self._knots = {name: np.asarray(t.boundaries) for name, t in self._unary.items() if t.kind == "spline"}
        self._knot_terms = {
            name: [_format_bound(k) for k in t.boundaries] for name, t in self._unary.items() if t.kind == "spline"
        }

    @classmethod
    def from_settings(cls, model: ModelSettings) -> FeatureTransforms:
        """The transforms declared in ``model.transforms``."""
        return cls(model.transforms)

    @property
    def active(self) -> bool:
        """Whether any transform is declared (rows pass through untouched otherwise)."""
        return bool(self._unary or self._products)

    @property
    def combines_features(self) -> bool:
        """Whether a transform reads two features (``product``): a row's bags must then be transformed together."""
        return bool(self._products)

    def apply(self, bags: Bags) -> Bags:
        """``bags`` with every declared transform applied (a new mapping; the input is not changed)."""
        if not self.active:
            return bags
        out: dict[str, list[NTV]] = {}
        for bag, items in bags.items():
            rewritten: list[NTV] = []
            for item in items:
                name = item["name"]
                transform = self._unary.get(name)
                if transform is None:
                    rewritten.append(item)
                else:
                    rewritten.extend(
                        self._unary_features(name, item.get("term", ""), float(item.get("value", 1.0)), transform)
                    )
            out[bag] = rewritten
        for name, product in self._products:
            features = self._product_features(name, bags, product.inputs)
            if features:
                out[product.bag] = [*out.get(product.bag, ()), *features]
        return out

    def apply_rows(self, rows: Sequence[Bags]) -> Sequence[Bags]:
        """:meth:`apply` over many rows (``rows`` itself when nothing is declared)."""
        return [self.apply(bags) for bags in rows] if self.active else rows

    def _unary_features(self, name: str, term: str, value: float, transform: TransformSettings) -> list[NTV]:
        if not math.isfinite(value):
            return [{"name": name, "term": term, "value": value}]  # left for validation to reject
        if transform.kind == "log":
            return [{"name": name, "term": term, "value": math.log1p(max(value, 0.0))}]
        if transform.kind == "indicator":
            return [{"name": name, "term": term, "value": 1.0}] if value > 0 else []
        if transform.kind == "bucketize":
            bucket = int(np.searchsorted(transform.boundaries, value, side="right"))
            return [{"name": name, "term": _joined_term(term, self._labels[name][bucket]), "value": 1.0}]
        return self._spline_features(name, term, value)

    def _spline_features(self, name: str, term: str, value: float) -> list[NTV]:
        knots, labels = self._knots[name], self._knot_terms[name]
        if value <= knots[0]:
            return [{"name": name, "term": _joined_term(term, labels[0]), "value": 1.0}]
        if value >= knots[-1]:
            return [{"name": name, "term": _joined_term(term, labels[-1]), "value": 1.0}]
        i = int(np.searchsorted(knots, value, side="right")) - 1
        t = float((value - knots[i]) / (knots[i + 1] - knots[i]))
        pieces = [(labels[i], 1.0 - t), (labels[i + 1], t)]
        return [{"name": name, "term": _joined_term(term, label), "value": w} for label, w in pieces if w > 0.0]

    @staticmethod
    def _product_features(name: str, bags: Bags, inputs: Sequence[str]) -> list[NTV]:
        first, second = inputs
        lefts = [item for items in bags.values() for item in items if item["name"] == first]
        rights = [item for items in bags.values() for item in items if item["name"] == second]
        out = []
        for a in lefts:
            for b in rights:
                ta, tb = a.get("term", ""), b.get("term", "")
                term = f"{ta}*{tb}" if ta and tb else ta or tb
                out.append(
                    {"name": name, "term": term, "value": float(a.get("value", 1.0)) * float(b.get("value", 1.0))}
                )
        return out
