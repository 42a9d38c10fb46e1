"""Test support for xDS: a real ADS control plane (control_plane.py) to drive Envoy and Baton."""
