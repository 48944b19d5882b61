"""Reading a JSON body with a size cap, without trusting Content-Length."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from kimiserve.errors import InvalidRequest


async def read_json(request: Request, max_bytes: int) -> Any:
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidRequest(
                f"The request body exceeds {max_bytes} bytes.", code="payloadTooLarge", status=413
            )
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalidJSON") from exc
