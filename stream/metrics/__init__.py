"""Prometheus metrics of every glmix process (DESIGN §7): read from the stages' own counters at scrape time."""
