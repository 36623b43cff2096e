"""Errors of the state stores."""

from __future__ import annotations

from stream.errors import GlmixError


class StateError(GlmixError):
    """A state store could not be opened, read or written."""


class StateLayoutError(StateError):
    """Stored bytes do not match the configured state layout (another configuration, or corruption)."""


class StoreOwnedError(StateError):
    """The store of a partition is already open by another owner."""
