"""tusd-py: a tus 1.0.0 resumable upload server (and client) on aiohttp."""

__version__ = "0.1.0"
