"""The models file: parsed and validated with errors naming the entry; `kimiserve models check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kimiserve.config.models_file import ModelsFileError, build, parse
from kimiserve.engines.openai_compat import PoolEngine, UpstreamEngine
from kimiserve.services import build_registry
from kimiserve.settings import Settings
from tests.standin.process import StandinProcess

GOOD = """
[[models]]
id = "kimi-k2.6"
aliases = ["moonshotai:kimi@2.6", "moonshotai-kimi-k2-6"]
owned_by = "moonshotai"
price = { input = 0.48, output = 2.00, cached = 0.08 }

[[models.upstreams]]
url = "http://127.0.0.1:{port_a}/v1"
model = "moonshotai/Kimi-K2.6"
dialect = "vllm"
max_concurrency = 8

[[models.upstreams]]
url = "http://127.0.0.1:{port_b}/v1"
model = "moonshotai/Kimi-K2.6"
dialect = "sglang"
key_env = "TEST_UPSTREAM_KEY"
context_length = 131072
"""


def good(port_a: int = 1, port_b: int = 2) -> str:
    return GOOD.replace("{port_a}", str(port_a)).replace("{port_b}", str(port_b))


async def test_a_good_file_builds_a_pool_per_model() -> None:
    built = build(parse(good()), env={"TEST_UPSTREAM_KEY": "sk-test"})
    assert len(built) == 1 and isinstance(built[0].engine, PoolEngine)
    pool = built[0].engine
    assert pool.capabilities.context_length == 131072 and pool.capabilities.max_concurrency == 72
    assert built[0].entry.aliases == ("moonshotai:kimi@2.6", "moonshotai-kimi-k2-6")
    await pool.aclose()


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda t: t.replace('dialect = "sglang"', 'dialect = "tgi"'), "models[0].upstreams[1].dialect"),
        (
            lambda t: t.replace("max_concurrency = 8", "max_concurrency = 0"),
            "models[0].upstreams[0].max_concurrency",
        ),
        (
            lambda t: t.replace('url = "http://127.0.0.1:1/v1"', 'url = "ftp://x"'),
            "models[0].upstreams[0].url",
        ),
        (lambda t: t.replace("cached = 0.08", "cached = 0.08, extra = 1"), "models[0].price.extra"),
        (lambda t: t.replace('id = "kimi-k2.6"\n', ""), "models[0].id"),
        (lambda t: t + '\n[[models]]\nid = "kimi-k2.6"\nupstreams = []\n', "models[1].upstreams"),
        (lambda t: t.replace("[[models]]", "[[models]"), "not valid TOML"),
    ],
)
def test_errors_name_the_entry(edit: object, named: str) -> None:
    with pytest.raises(ModelsFileError) as caught:
        parse(edit(good()), "models.toml")  # type: ignore[operator]
    assert named in caught.value.message and caught.value.message.startswith("models.toml")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda t: t.replace('dialect = "sglang"', 'dialect = "tgi"'),
            "line 17: models[0].upstreams[1].dialect",
        ),
        (
            lambda t: t.replace("max_concurrency = 8", "max_concurrency = 0"),
            "line 12: models[0].upstreams[0]",
        ),
        (lambda t: t.replace("cached = 0.08", "cached = 0.08, extra = 1"), "line 6: models[0].price.extra"),
        (lambda t: t.replace('id = "kimi-k2.6"\n', ""), "line 2: models[0].id: Field required"),  # its table
        (lambda t: t + '\n[[models]]\nid = "x"\nupstreams = []\n', "line 23: models[1].upstreams"),
        (
            lambda t: t.replace('model = "moonshotai/Kimi-K2.6"\ndialect = "sglang"', 'dialect = "sglang"'),
            "line 14:",
        ),
        (lambda t: t.replace("[[models]]", "[[models]"), "line 2"),  # tomllib's own message
    ],
)
def test_errors_name_the_line(edit: object, named: str) -> None:
    with pytest.raises(ModelsFileError) as caught:
        parse(edit(good()), "models.toml")  # type: ignore[operator]
    assert named in caught.value.message, caught.value.message
    # an invalid upstream is not also reported as its list being "too short"
    assert "Tuple should have" not in caught.value.message or named.endswith(".upstreams")


def test_a_missing_key_variable_is_named() -> None:
    with pytest.raises(ModelsFileError) as caught:
        build(parse(good()), env={})
    assert (
        "models[0].upstreams[1].key_env" in caught.value.message
        and "TEST_UPSTREAM_KEY" in caught.value.message
    )


def test_duplicate_names_across_models_are_refused() -> None:
    other = '[[models]]\nid = "other"\naliases = ["kimi-k2.6"]\n'
    other += '[[models.upstreams]]\nurl = "http://x/v1"\nmodel = "m"\n'
    with pytest.raises(ModelsFileError) as caught:
        parse(good() + "\n" + other)
    assert "line 23: models[1]: the name 'kimi-k2.6' is taken by models[0]" in caught.value.message


async def test_registry_serves_file_models_and_keeps_the_embedded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kimiserve.engines.fake import FakeEngine

    path = tmp_path / "models.toml"
    path.write_text(good().replace('key_env = "TEST_UPSTREAM_KEY"\n', ""))
    registry = build_registry(Settings(models_file=path), FakeEngine(), "smollm2")
    kimi = registry.resolve("moonshotai:kimi@2.6")
    assert kimi.id == "kimi-k2.6" and kimi.served_by is None and isinstance(kimi.engine, PoolEngine)
    assert registry.resolve("smollm2").engine is not kimi.engine
    without = build_registry(Settings(), FakeEngine(), "smollm2")
    assert without.resolve("kimi-k2.6").served_by == "smollm2"  # the default is unchanged
    for engine in registry.engines():
        await engine.aclose()


def test_models_check_probes_every_upstream(tmp_path: Path) -> None:
    live = StandinProcess("live").start()
    try:
        from tests.serverproc import free_port

        path = tmp_path / "models.toml"
        path.write_text(good(live.port, free_port()).replace('key_env = "TEST_UPSTREAM_KEY"\n', ""))
        run = [sys.executable, "-m", "kimiserve.cli.main", "models", "check", "--models-file", str(path)]
        table = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert table.returncode == 1, table.stderr  # one upstream is down
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["MODEL", "UPSTREAM", "DIALECT", "OK", "MS", "DETAIL"]
        assert "yes" in lines[1] and "serves moonshotai/Kimi-K2.6" in lines[1]
        assert "NO" in lines[2] and "refused the connection" in lines[2]
        as_json = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60)
        rows = json.loads(as_json.stdout)["upstreams"]
        assert [r["ok"] for r in rows] == [True, False] and rows[0]["dialect"] == "vllm"
    finally:
        live.stop()


def test_upstream_engine_names_itself_by_url_never_key() -> None:
    engine = UpstreamEngine(parse(good()).models[0].upstreams[1].config(), api_key="sk-secret")
    assert "sk-secret" not in engine.name and "sk-secret" not in engine.config.label
