"""Per-speaker analytics: prosody figures and the emotion timeline a call summary is built from."""
