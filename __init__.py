"""Baton: a node proxy for VMs and bare metal (see README.md)."""
