"""The two errors of the built-in tools (drawn in `kimiserve/tools/__init__.py`)."""

from __future__ import annotations

from kimiserve.errors import UnsupportedFeature


class ToolUnavailable(UnsupportedFeature):
    """A built-in tool cannot run on this server; the request that asks for it is refused."""

    def __init__(self, message: str, *, parameter: str = "tools") -> None:
        super().__init__(message, parameter=parameter)


class ToolFailed(Exception):
    """One tool run failed; the message is shown to the model (and in the visible result)."""
