"""The periodic global refit: archived examples -> a gated new version of the global model."""
