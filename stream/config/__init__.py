"""Typed, validated configuration: one :class:`Settings` object, loaded once."""

from stream.config.exceptions import ConfigError
from stream.config.settings import (
    CoordinateSettings,
    JoinerSettings,
    KafkaSettings,
    ModelSettings,
    ServingSettings,
    Settings,
    TopicSettings,
    load_settings,
)

__all__ = [
    "ConfigError",
    "CoordinateSettings",
    "JoinerSettings",
    "KafkaSettings",
    "ModelSettings",
    "ServingSettings",
    "Settings",
    "TopicSettings",
    "load_settings",
]
