"""A synthetic job-recommendation world with a known GLMix ground truth, and its event stream."""

from stream.synthetic.events import (
    IMPRESSION,
    INTERACTION,
    LabeledImpression,
    SyntheticEvent,
    event_stream,
    labeled_impressions,
)
from stream.synthetic.world import GroundTruth, World, WorldSpec, ratings_like

__all__ = [
    "IMPRESSION",
    "INTERACTION",
    "GroundTruth",
    "LabeledImpression",
    "SyntheticEvent",
    "World",
    "WorldSpec",
    "event_stream",
    "labeled_impressions",
    "ratings_like",
]
