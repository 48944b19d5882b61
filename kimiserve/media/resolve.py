"""Media references → the media themselves, as data URIs, each error naming its parameter.

Runware `inputs.images` / `inputs.videos` and OpenAI `image_url` / `video_url` parts all come
here: an uploaded image's UUID, an http(s) URL (fetched through the SSRF-safe fetcher, so an
upstream engine never fetches a client's URL from inside our network), a data URI or base64.
Engines receive data URIs only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace

from kimiserve.domain.types import GenerationRequest, MediaKind, Message
from kimiserve.media.uploads import Media, MediaStore


async def resolve_media(
    media: MediaStore,
    account_id: str,
    refs: Sequence[str],
    *,
    parameter: str = "inputs.images",
    kind: MediaKind = "image",
) -> list[Media]:
    """Load every referenced image or video at once.

    The first failure (in input order) is raised, naming `<parameter>.<index>`.
    """
    return await _load_all(media, account_id, [(ref, kind, f"{parameter}.{i}") for i, ref in enumerate(refs)])


async def resolve_message_media(
    media: MediaStore,
    account_id: str,
    request: GenerationRequest,
    parameter_of: Callable[[int, MediaKind, int], str],
) -> GenerationRequest:
    """The request with every message's image and video references replaced by data URIs.

    `parameter_of(message_index, kind, index_within_message)` names a failing reference in the
    client's own terms (e.g. `messages[2].content[1].image_url.url`).
    """
    wanted: list[tuple[str, MediaKind, str]] = []
    for i, message in enumerate(request.messages):
        wanted += [(ref, "image", parameter_of(i, "image", k)) for k, ref in enumerate(message.images)]
        wanted += [(ref, "video", parameter_of(i, "video", k)) for k, ref in enumerate(message.videos)]
    if not wanted:
        return request
    loaded = iter([m.data_uri() for m in await _load_all(media, account_id, wanted)])
    messages: list[Message] = []
    for message in request.messages:
        if message.images or message.videos:
            images = tuple(next(loaded) for _ in message.images)
            videos = tuple(next(loaded) for _ in message.videos)
            message = replace(message, images=images, videos=videos)
        messages.append(message)
    return replace(request, messages=tuple(messages))


async def _load_all(
    media: MediaStore, account_id: str, wanted: Sequence[tuple[str, MediaKind, str]]
) -> list[Media]:
    results = await asyncio.gather(
        *(media.load(account_id, ref, parameter=where, kind=kind) for ref, kind, where in wanted),
        return_exceptions=True,
    )
    loaded: list[Media] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        loaded.append(result)
    return loaded


class Resolver:
    """The domain's `MediaResolver` port over the media store (uploads, data URIs, fetched URLs)."""

    def __init__(self, media: MediaStore) -> None:
        self._media = media

    async def resolve(
        self,
        account_id: str,
        request: GenerationRequest,
        parameter_of: Callable[[int, MediaKind, int], str],
    ) -> GenerationRequest:
        return await resolve_message_media(self._media, account_id, request, parameter_of)
