"""One real llama.cpp engine (the bundled SmolLM2-135M) shared by the engine tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

# 8 sequences x 512 tokens: small enough to start fast, big enough for 8-way concurrency tests.
TEST_CONFIG = LlamaCppConfig(n_ctx=4096, max_sequences=8, prompt_chunk=128)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(TEST_CONFIG)
    yield engine
    engine.close()
