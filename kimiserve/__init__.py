"""kimiserve: a self-hosted server for the Kimi K2.6 text-inference API."""

__version__ = "0.1.0"
