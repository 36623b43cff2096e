"""Labeled examples archived to hourly Avro files for the global refit and offline evaluation."""
