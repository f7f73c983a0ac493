"""Omiro: self-hostable random video chat (signaling, matchmaking, abuse control)."""

__version__ = "0.1.0"
