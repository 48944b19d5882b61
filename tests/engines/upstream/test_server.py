"""Through a real kimiserve process with the official OpenAI SDK: Kimi served from upstreams
named in a models file — the stand-in vLLM, and a second kimiserve on the embedded model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI

from tests.serverproc import ServerProcess, create_key
from tests.standin.process import StandinProcess

MODELS = """
[[models]]
id = "kimi-k2.6"
aliases = ["moonshotai:kimi@2.6", "moonshotai-kimi-k2-6"]
owned_by = "moonshotai"
price = {{ input = 0.48, output = 2.00, cached = 0.08 }}

[[models.upstreams]]
url = "{url}"
model = "{model}"
dialect = "{dialect}"
"""


def front(tmp: Path, url: str, model: str, dialect: str) -> tuple[ServerProcess, str]:
    """A kimiserve whose Kimi model is the given upstream (its embedded engine: the fake)."""
    path = tmp / "models.toml"
    path.write_text(MODELS.format(url=url, model=model, dialect=dialect))
    env = {"KIMISERVE_MODELS_FILE": str(path), "KIMISERVE_ENGINE": "fake"}
    data = tmp / "front"
    key = create_key(data, name="front")
    server = ServerProcess(data, env=env)
    server.start()
    return server, key


@pytest.fixture(scope="module")
def vllm_front(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, str, StandinProcess]]:
    standin = StandinProcess("behind-kimiserve").start()
    server, key = front(tmp_path_factory.mktemp("vllm-front"), standin.url, "moonshotai/Kimi-K2.6", "vllm")
    yield server, key, standin
    server.stop()
    standin.stop()


async def test_openai_sdk_streams_from_vllm_through_kimiserve(
    vllm_front: tuple[ServerProcess, str, StandinProcess],
) -> None:
    server, key, standin = vllm_front
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as client:
        models = await client.models.list()
        assert "kimi-k2.6" in [m.id for m in models.data]
        messages = [
            {"role": "system", "content": "a long shared system prompt for the cache"},
            {"role": "user", "content": "hello from the sdk"},
        ]
        stream = await client.chat.completions.create(
            model="moonshotai:kimi@2.6",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            prompt_cache_key="conv-9",
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert text == "hello from the sdk" and usage is not None and usage.prompt_tokens == 14
        again = await client.chat.completions.create(model="kimi-k2.6", messages=messages)  # type: ignore[arg-type]
        assert again.choices[0].message.content == "hello from the sdk"
        assert again.usage is not None and again.usage.prompt_tokens_details is not None
        assert again.usage.prompt_tokens_details.cached_tokens == 9  # same account: the salt matches
    bodies = standin.stats()["requests"]
    assert bodies[0]["prompt_cache_key"] == "conv-9" and bodies[0]["chat_template_kwargs"] == {
        "thinking": False
    }
    assert bodies[0]["cache_salt"] and bodies[0]["cache_salt"] == bodies[1]["cache_salt"]  # the account id


async def test_upstream_400_reaches_the_sdk_naming_the_parameter(
    vllm_front: tuple[ServerProcess, str, StandinProcess],
) -> None:
    server, key, _ = vllm_front
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="kimi-k2.6",
                messages=[{"role": "user", "content": "#error400"}],
            )
    assert caught.value.param == "temperature" and "temperature must be in" in caught.value.message


async def test_another_kimiserve_on_the_embedded_model_as_upstream(tmp_path: Path) -> None:
    back_dir = tmp_path / "back"
    back = ServerProcess(back_dir, extra_args=("--open-mode",))
    back.start()
    try:
        server, key = front(tmp_path, f"{back.base_url}/v1", "smollm2-135m-instruct", "openai")
        try:
            async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as client:
                reply = await client.chat.completions.create(
                    model="kimi-k2.6",
                    messages=[{"role": "user", "content": "Say hello."}],
                    max_tokens=8,
                    seed=1,
                )
            assert reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.prompt_tokens > 0
            assert 0 < reply.usage.completion_tokens <= 8
        finally:
            server.stop()
    finally:
        back.stop()
