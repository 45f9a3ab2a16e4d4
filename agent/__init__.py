"""roomagent: the on-device agent of a privacy-first video-conferencing room system."""

__all__ = ["__version__"]

__version__ = "0.1.0"
