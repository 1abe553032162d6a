"""mirror: rescue images behind a dying CORS proxy, verify them, rewrite the posts."""

__version__ = "0.1.0"
