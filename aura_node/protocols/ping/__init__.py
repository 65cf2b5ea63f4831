"""Ping: a liveness probe between two devices (the smallest choreography)."""
