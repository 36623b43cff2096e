"""Errors raised while loading and validating configuration."""

from stream.errors import GlmixError


class ConfigError(GlmixError):
    """A configuration key is unknown or its value is invalid.

    ``key`` is the dotted path of the offending key (``model.coordinates[0].l2``), or a
    command-line option (``--since``), so the message always names what to fix.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"option {key}: {problem}" if key.startswith("--") else f"config key '{key}': {problem}")
        self.key = key
        self.problem = problem
