"""Sigfox ingest: backend callbacks over HTTP in, RAW messages out, answered after the PubAck."""
