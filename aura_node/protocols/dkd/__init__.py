"""Threshold deterministic key derivation (DKD)."""
