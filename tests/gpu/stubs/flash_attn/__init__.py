"""Stand-in for flash-attn's import surface used by OpenRLHF (see ../README.md)."""

__version__ = "0.0.0+stand-in"
