"""Images clients upload (`imageUpload`) or reference (`inputs.images`), as stored bytes.

An image reference is an uploaded image's UUID, an http(s) URL (fetched through the SSRF-safe
fetcher), a data URI or bare base64. Uploaded bytes live in `<data_dir>/media/<imageUUID>`,
with a row per image (owner, content type, size, digest); they are served back at
`GET /media/<imageUUID>`. Only real images (PNG, JPEG, GIF, WebP, BMP by their magic bytes)
are accepted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from kimiserve.errors import InvalidRequest
from kimiserve.media.fetch import FetchError, SafeFetcher
from kimiserve.storage.sql.media import MediaRow, SqlMediaStore

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DATA_URI = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)", re.S)


@dataclass(frozen=True)
class Image:
    content: bytes
    content_type: str

    def data_uri(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.content).decode()}"


@dataclass(frozen=True)
class StoredImage:
    id: str
    content_type: str
    size_bytes: int


def sniff(content: bytes) -> str | None:
    """The image type from the magic bytes, or None when it is not an image we take."""
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    if content.startswith(b"BM") and len(content) > 26:
        return "image/bmp"
    return None


def is_uuid(value: str) -> bool:
    return _UUID.fullmatch(value) is not None


class MediaStore:
    def __init__(self, root: Path, rows: SqlMediaStore, fetcher: SafeFetcher, max_bytes: int) -> None:
        self._root = root
        self._rows = rows
        self._fetcher = fetcher
        self._max_bytes = max_bytes

    async def upload(self, account_id: str, ref: str, *, parameter: str = "image") -> StoredImage:
        """Store the referenced image under a new imageUUID."""
        image = await self.load(account_id, ref, parameter=parameter)
        image_id = str(uuid.uuid4())
        await asyncio.to_thread(self._write, image_id, image.content)
        await self._rows.add(
            MediaRow(
                id=image_id,
                account_id=account_id,
                content_type=image.content_type,
                size_bytes=len(image.content),
                sha256=hashlib.sha256(image.content).hexdigest(),
            )
        )
        return StoredImage(image_id, image.content_type, len(image.content))

    async def load(self, account_id: str, ref: str, *, parameter: str) -> Image:
        """The image a reference names; InvalidRequest naming `parameter` when it cannot be had."""
        if is_uuid(ref):
            row = await self._rows.get(ref.lower())
            if row is None or row.account_id != account_id:
                raise InvalidRequest(
                    f"No uploaded image {ref} for this account.", code="invalidImage", parameter=parameter
                )
            return Image(await asyncio.to_thread(self.path_of(row.id).read_bytes), row.content_type)
        if ref.startswith(("http://", "https://")):
            try:
                content = (await self._fetcher.get(ref)).content
            except FetchError as exc:
                raise InvalidRequest(
                    f"{parameter}: {exc}", code="invalidImage", parameter=parameter
                ) from None
        else:
            content = self._decode(ref, parameter)
        return self._checked(content, parameter)

    def _decode(self, ref: str, parameter: str) -> bytes:
        match = _DATA_URI.fullmatch(ref) if ref.startswith("data:") else None
        if ref.startswith("data:") and match is None:
            raise InvalidRequest(
                f"{parameter} is not a base64 data URI.", code="invalidImage", parameter=parameter
            )
        text = match.group("data") if match is not None else ref
        if len(text) > self._max_bytes * 4 // 3 + 4:
            raise InvalidRequest(
                f"{parameter} is over the {self._max_bytes}-byte limit.",
                code="invalidImage",
                parameter=parameter,
            )
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"{parameter} is not valid base64 image data.", code="invalidImage", parameter=parameter
            ) from None

    def _checked(self, content: bytes, parameter: str) -> Image:
        if len(content) > self._max_bytes:
            raise InvalidRequest(
                f"{parameter} is over the {self._max_bytes}-byte limit.",
                code="invalidImage",
                parameter=parameter,
            )
        content_type = sniff(content)
        if content_type is None:
            raise InvalidRequest(
                f"{parameter} is not a PNG, JPEG, GIF, WebP or BMP image.",
                code="invalidImage",
                parameter=parameter,
            )
        return Image(content, content_type)

    def path_of(self, image_id: str) -> Path:
        if not is_uuid(image_id):
            raise ValueError(f"not an image id: {image_id!r}")
        return self._root / image_id.lower()

    async def find(self, image_id: str) -> tuple[Path, str] | None:
        """Where a stored image's bytes are and its content type (for serving it back)."""
        if not is_uuid(image_id):
            return None
        row = await self._rows.get(image_id.lower())
        if row is None:
            return None
        path = self.path_of(row.id)
        return (path, row.content_type) if path.is_file() else None

    def _write(self, image_id: str, content: bytes) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        final = self.path_of(image_id)
        partial = final.with_suffix(".partial")
        with partial.open("wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(final)
