"""`inputs.images` of a task → the images themselves, each error naming its index."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kimiserve.media.uploads import Image, MediaStore


async def resolve_images(
    media: MediaStore, account_id: str, refs: Sequence[str], *, parameter: str = "inputs.images"
) -> list[Image]:
    """Load every referenced image (uploaded UUID, URL, data URI or base64) at once.

    The first failure (in input order) is raised, naming `<parameter>.<index>`.
    """
    results = await asyncio.gather(
        *(media.load(account_id, ref, parameter=f"{parameter}.{i}") for i, ref in enumerate(refs)),
        return_exceptions=True,
    )
    images: list[Image] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        images.append(result)
    return images
