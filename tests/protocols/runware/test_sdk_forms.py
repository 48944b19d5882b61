"""What the official SDK (runware 0.5.24) builds for textInference passes `parse_task` unchanged.

The request dicts come from the SDK's own builder, without a connection, so a change in what
the SDK sends shows up here before it shows up against a live server.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from kimiserve.protocols.runware.models import TextInferenceTask
from kimiserve.protocols.runware.validation import parse_task
from tests.protocols.runware.validation_cases import PNG_B64, TASK_UUID, TOOL_HISTORY, WEATHER_TOOL

runware = pytest.importorskip("runware")
types = pytest.importorskip("runware.types")


async def built(request: Any) -> dict[str, Any]:
    client = runware.Runware(api_key="k", url="ws://localhost:8080")
    await client._processTextInputs(request)
    payload: dict[str, Any] = client._buildTextRequest(request)
    return payload


async def test_plain_request_with_settings_objects() -> None:
    request = types.ITextInference(
        model="moonshotai:kimi@2.6",
        taskUUID=TASK_UUID,
        messages=[{"role": "user", "content": "hi"}],
        settings=types.ISettings(
            temperature=0.7, topP=0.9, maxTokens=10, stopSequences=["\n"], systemPrompt="Be brief.", topK=40
        ),
        seed=7,
        numberResults=2,
        includeCost=True,
        includeUsage=True,
    )
    payload = await built(request)
    assert payload["deliveryMethod"] == "sync" and payload["numberResults"] == 2
    assert isinstance(parse_task(payload), TextInferenceTask)


async def test_tool_history_tools_inputs_and_provider_settings(tmp_path: Path) -> None:
    image = tmp_path / "pixel.png"
    image.write_bytes(base64.b64decode(PNG_B64))
    tool = {**WEATHER_TOOL}
    request = types.ITextInference(
        model="moonshotai-kimi-k2-6",
        taskUUID=TASK_UUID,
        messages=[dict(m) for m in TOOL_HISTORY],
        tools=[tool],
        toolChoice={"type": "tool", "name": "get_weather"},
        inputs=types.ITextInputs(images=[str(image)], documents=["https://example.com/a.pdf"]),
        providerSettings=types.IGoogleProviderSettings(search=True),
        deliveryMethod="async",
    )
    payload = await built(request)
    assert payload["messages"][1] == {
        "role": "assistant",
        "tools": [{"id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
    }
    assert payload["messages"][2] == {"role": "tool", "id": "call_1", "content": '{"temp": 21}'}
    assert payload["tools"][0]["type"] == "function"
    assert payload["inputs"]["images"][0].startswith("data:image/png;base64,")
    assert payload["providerSettings"] == {"google": {"search": True}}
    assert isinstance(parse_task(payload), TextInferenceTask)
