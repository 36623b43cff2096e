"""Errors raised while talking to Kafka."""

from stream.errors import GlmixError


class KafkaClientError(GlmixError):
    """A Kafka client could not be created or a Kafka operation failed; the cause is chained."""


class BrokerUnavailableError(KafkaClientError):
    """No broker answered at the configured bootstrap address within the time allowed."""


class InputLostError(KafkaClientError):
    """Records of a stage's input were deleted before it read them and ``kafka.input_loss`` is ``stop``."""
