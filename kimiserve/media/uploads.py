"""Images clients upload (`imageUpload`) or reference (`inputs.images`), as stored bytes, and
the videos they reference (`inputs.videos`, OpenAI `video_url`).

An image reference is an uploaded image's UUID, an http(s) URL (fetched through the SSRF-safe
fetcher), a data URI or bare base64. Uploaded bytes live in `<data_dir>/media/<imageUUID>`,
with a row per image (owner, content type, size, digest); they are served back at
`GET /media/<imageUUID>`. Only real images (PNG, JPEG, GIF, WebP, BMP by their magic bytes)
are accepted. A video reference is a URL, a data URI or bare base64 (there is no video upload);
only MP4/QuickTime, WebM/Matroska and AVI (by their magic bytes) are accepted. Both are bounded
by the same byte limit as every fetch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kimiserve.domain.ports import MediaRow, MediaRows
from kimiserve.domain.types import MediaKind
from kimiserve.errors import InvalidRequest
from kimiserve.media.fetch import FetchError, SafeFetcher

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DATA_URI = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)", re.S)


@dataclass(frozen=True)
class Media:
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


def sniff_video(content: bytes) -> str | None:
    """The video type from the magic bytes, or None when it is not a video we take."""
    if content[4:8] == b"ftyp":
        return "video/quicktime" if content[8:10] == b"qt" else "video/mp4"
    if content.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in content[:64] else "video/x-matroska"
    if content[:4] == b"RIFF" and content[8:12] == b"AVI ":
        return "video/x-msvideo"
    return None


_KINDS: dict[MediaKind, tuple[Callable[[bytes], str | None], str, str]] = {
    "image": (sniff, "invalidImage", "a PNG, JPEG, GIF, WebP or BMP image"),
    "video": (sniff_video, "invalidVideo", "an MP4, QuickTime, WebM, Matroska or AVI video"),
}


def is_uuid(value: str) -> bool:
    return _UUID.fullmatch(value) is not None


class MediaStore:
    def __init__(self, root: Path, rows: MediaRows, fetcher: SafeFetcher, max_bytes: int) -> None:
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

    async def load(self, account_id: str, ref: str, *, parameter: str, kind: MediaKind = "image") -> Media:
        """The image (or video) a reference names; InvalidRequest naming `parameter` when it
        cannot be had."""
        code = _KINDS[kind][1]
        if kind == "video" and is_uuid(ref):
            raise InvalidRequest(
                f"{parameter}: videos are not uploaded to this server; send a URL or a data URI.",
                code=code,
                parameter=parameter,
            )
        if is_uuid(ref):
            row = await self._rows.get(ref.lower())
            if row is None or row.account_id != account_id:
                raise InvalidRequest(
                    f"No uploaded image {ref} for this account.", code=code, parameter=parameter
                )
            return Media(await asyncio.to_thread(self.path_of(row.id).read_bytes), row.content_type)
        if ref.startswith(("http://", "https://")):
            try:
                content = (await self._fetcher.get(ref)).content
            except FetchError as exc:
                raise InvalidRequest(f"{parameter}: {exc}", code=code, parameter=parameter) from None
        else:
            content = self._decode(ref, parameter, code)
        return self._checked(content, parameter, kind)

    def _decode(self, ref: str, parameter: str, code: str) -> bytes:
        match = _DATA_URI.fullmatch(ref) if ref.startswith("data:") else None
        if ref.startswith("data:") and match is None:
            raise InvalidRequest(f"{parameter} is not a base64 data URI.", code=code, parameter=parameter)
        text = match.group("data") if match is not None else ref
        if len(text) > self._max_bytes * 4 // 3 + 4:
            raise InvalidRequest(
                f"{parameter} is over the {self._max_bytes}-byte limit.",
                code=code,
                parameter=parameter,
            )
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"{parameter} is not valid base64 data.", code=code, parameter=parameter
            ) from None

    def _checked(self, content: bytes, parameter: str, kind: MediaKind) -> Media:
        detect, code, described = _KINDS[kind]
        if len(content) > self._max_bytes:
            raise InvalidRequest(
                f"{parameter} is over the {self._max_bytes}-byte limit.",
                code=code,
                parameter=parameter,
            )
        content_type = detect(content)
        if content_type is None:
            raise InvalidRequest(
                f"{parameter} is not {described}.",
                code=code,
                parameter=parameter,
            )
        return Media(content, content_type)

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
