"""restream: one live input, encoded once, pushed to up to five platforms."""

__version__ = "0.1.0"
