"""Typed, validated configuration: one :class:`Settings` object, loaded once."""

from stream.config.exceptions import ConfigError
from stream.config.loader import load_settings
from stream.config.settings import (
    ArchiveSettings,
    CoordinateSettings,
    GameInputSettings,
    JoinerSettings,
    KafkaSettings,
    MetricsSettings,
    ModelSettings,
    RefitSettings,
    ServingSettings,
    Settings,
    TopicSettings,
    TransformSettings,
)

__all__ = [
    "ArchiveSettings",
    "ConfigError",
    "CoordinateSettings",
    "GameInputSettings",
    "JoinerSettings",
    "KafkaSettings",
    "MetricsSettings",
    "ModelSettings",
    "RefitSettings",
    "ServingSettings",
    "Settings",
    "TopicSettings",
    "TransformSettings",
    "load_settings",
]
