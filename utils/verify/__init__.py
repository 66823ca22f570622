"""Verification against the published implementation: golden conformance."""
