"""Transports: thin adapters between wire formats and the call session (the only code that knows them)."""
