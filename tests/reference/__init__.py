"""Reference implementations that the product's own code is compared against in tests (never
imported by the product)."""
