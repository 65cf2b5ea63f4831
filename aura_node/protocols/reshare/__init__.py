"""Resharing: move an account to a new holder set (devices, guardians, thresholds), same key."""
