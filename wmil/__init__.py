"""wmil: offline imitation learning inside learned world models."""

__version__ = "0.1.0"
