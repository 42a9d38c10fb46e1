"""The HTTP connection manager and what it drives (a regular package: worker/privileges.py
imports every worker module before a worker drops privileges, and only finds packages)."""
