"""The root of every error glmix-stream raises on purpose.

Each stage keeps its own ``exceptions.py`` with subclasses of :class:`GlmixError`, so a
caller can catch everything from this package with one ``except`` while the type still
says what went wrong.
"""


class GlmixError(Exception):
    """Base class of all errors raised by glmix-stream."""


class InvalidValueError(GlmixError, ValueError):
    """An argument or record outside what a function accepts; the message names it and why."""


class WaitTimeoutError(GlmixError, TimeoutError):
    """Something awaited (a topic's end, a model) did not happen within the time allowed."""
