"""glmix-stream: streaming, incrementally trained GLMix models on Kafka."""

__version__ = "0.1.0"
