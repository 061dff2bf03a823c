"""Audio ingest: decoding, per-channel buffering, voice activity detection and analysis windows."""
