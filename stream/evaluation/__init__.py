"""Offline evaluation protocols."""
