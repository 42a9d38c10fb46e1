"""Baton version, reported by `baton status` and /server_info."""
VERSION = "0.2.0"
