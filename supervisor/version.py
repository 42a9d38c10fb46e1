"""Baton version, reported by `baton status` and /server_info."""
VERSION = "0.3.0"
