"""Talking to OpenStack-compatible clouds (no Flask in here)."""
