"""Who is calling: the account a request belongs to and what its key may do.

A domain type (the front door authorizes with it); `platform/api_keys.py` builds it from a key's
row. Scopes: `inference` (textInference, chat completions, responses, messages), `tasks:read`
(getResponse, getTaskDetails, stored responses), `media:upload` (imageUpload), `admin` (the
/admin API).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kimiserve.domain.ports import Limits
from kimiserve.errors import Forbidden

SCOPES: tuple[str, ...] = ("inference", "tasks:read", "media:upload", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account every task, usage record and price belongs to, and what the
    key may do."""

    account_id: str
    key_id: str
    scopes: frozenset[str] = frozenset(SCOPES)
    models: tuple[str, ...] | None = None  # None: every model
    key_limits: Limits = field(default_factory=Limits)
    account_limits: Limits = field(default_factory=Limits)
    metered: bool | None = None  # whether the account is metered, as read with the key; None: unknown


def authorize(principal: Principal, scope: str) -> None:
    """403 unless the key has `scope`."""
    if scope not in principal.scopes:
        raise Forbidden(f"This API key lacks the '{scope}' scope.", code="missingScope", parameter="scope")
