"""Code shared by every pulsestack service: wire formats, bus, store, metrics, logging, config."""

__version__ = "0.1.0"
