"""The web dashboard and playground, served by kimiserve itself at `/dashboard` (see routes.py)."""

from kimiserve.dashboard.routes import routes

__all__ = ["routes"]
