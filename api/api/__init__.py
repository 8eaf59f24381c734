"""The read API: consumption, device state and alerts, token-authenticated, described by OpenAPI."""
