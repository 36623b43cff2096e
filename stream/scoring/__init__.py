"""Scoring: the Python scorer, the HTTP service, offline and streaming scoring, exploration."""
