"""The models file (TOML): which model ids kimiserve serves, from which upstreams, at what price.

    [[models]]
    id = "kimi-k2.6"
    aliases = ["moonshotai:kimi@2.6", "moonshotai-kimi-k2-6"]
    owned_by = "moonshotai"
    price = { input = 0.48, output = 2.00, cached = 0.08 }   # USD per million tokens

    [[models.upstreams]]
    url = "http://10.0.0.5:8000/v1"
    model = "moonshotai/Kimi-K2.6"       # the name the upstream serves
    dialect = "vllm"                     # vllm | sglang | moonshot | openai
    key_env = "KIMI_NODE_A_KEY"          # optional: the variable holding its API key
    weight = 1.0
    max_concurrency = 256
    context_length = 262144
    vision = true

Validated whole at start; every error names its line and its entry
(`line 12: models[0].upstreams[1].dialect: …`; TOML syntax errors name the line as tomllib does).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kimiserve.engines.base import Engine
from kimiserve.engines.openai_compat import PoolEngine, UpstreamConfig, UpstreamEngine
from kimiserve.engines.openai_compat.config import Dialect
from kimiserve.errors import KimiserveError

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class ModelsFileError(KimiserveError):
    code = "invalidModelsFile"
    status = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceEntry(_Strict):
    input: NonNegative
    output: NonNegative
    cached: NonNegative = 0.0


class UpstreamEntry(_Strict):
    url: str
    model: str
    dialect: Dialect = "openai"
    key_env: str | None = None
    weight: Positive = 1.0
    max_concurrency: Annotated[int, Field(gt=0)] = 64
    context_length: Annotated[int, Field(gt=0)] = 262_144
    vision: bool = False
    connect_timeout_s: Positive = 5.0
    read_timeout_s: Positive = 120.0

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    def config(self) -> UpstreamConfig:
        return UpstreamConfig(**self.model_dump())


class ModelEntry(_Strict):
    id: Annotated[str, Field(min_length=1)]
    aliases: tuple[str, ...] = ()
    owned_by: str = "kimiserve"
    price: PriceEntry = PriceEntry(input=0, output=0)
    upstreams: Annotated[tuple[UpstreamEntry, ...], Field(min_length=1)]


class ModelsFile(_Strict):
    models: Annotated[tuple[ModelEntry, ...], Field(min_length=1)]


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\s-]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _lines(text: str) -> dict[tuple[int | str, ...], tuple[int, dict[str, int]]]:
    """Where each table of the file starts (1-based line) and the line of each of its keys, by
    the path pydantic reports (`("models", 0, "upstreams", 1)`). Array-of-tables headers count
    their entries; dotted keys and tables spread over several headers are not followed."""
    blocks: dict[tuple[int | str, ...], tuple[int, dict[str, int]]] = {(): (1, {})}
    counts: dict[tuple[str, ...], int] = {}
    current: tuple[int | str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER.match(line):
            names = tuple(n.strip() for n in header.group(2).split("."))
            path: list[int | str] = []
            for depth, name in enumerate(names):
                path.append(name)
                prefix = names[: depth + 1]
                if depth < len(names) - 1 and prefix in counts:
                    path.append(counts[prefix] - 1)  # the latest entry of an enclosing array
            if header.group(1) == "[[":
                counts[names] = counts.get(names, 0) + 1
                path.append(counts[names] - 1)
            current = tuple(path)
            blocks[current] = (number, {})
        elif (key := _KEY.match(line)) and current in blocks:
            blocks[current][1].setdefault(key.group(1), number)
    return blocks


def _line_of(
    blocks: dict[tuple[int | str, ...], tuple[int, dict[str, int]]], loc: tuple[int | str, ...]
) -> int:
    """The line an error at `loc` is about: its key's, else its table's header."""
    for split in range(len(loc), -1, -1):
        block, rest = loc[:split], loc[split:]
        if block in blocks:
            header, keys = blocks[block]
            if rest and isinstance(rest[0], str) and rest[0] in keys:
                return keys[rest[0]]
            return header
    return 1


def parse(text: str, source: str = "models file") -> ModelsFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelsFileError(f"{source}: not valid TOML: {exc}") from None
    try:
        parsed = ModelsFile.model_validate(raw)
    except ValidationError as exc:
        blocks = _lines(text)
        errors = exc.errors()
        # An invalid entry also makes its list "too short" (it is left out): say only the first.
        inner = [tuple(e["loc"]) for e in errors]
        errors = [
            e
            for e in errors
            if not (
                e["type"] == "too_short"
                and any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == tuple(e["loc"]) for o in inner)
            )
        ]
        problems = "; ".join(
            f"line {_line_of(blocks, tuple(e['loc']))}: {_where(tuple(e['loc']))}: {e['msg']}" for e in errors
        )
        raise ModelsFileError(f"{source}: {problems}") from None
    names: dict[str, int] = {}
    for i, model in enumerate(parsed.models):
        for name in (model.id, *model.aliases):
            if name in names and names[name] != i:
                line = _line_of(_lines(text), ("models", i, "aliases" if name != model.id else "id"))
                raise ModelsFileError(
                    f"{source}: line {line}: models[{i}]: the name {name!r} is taken by models[{names[name]}]"
                )
            names[name] = i
    return parsed


def load(path: Path) -> ModelsFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelsFileError(f"cannot read the models file {path}: {exc.strerror}") from None
    return parse(text, str(path))


@dataclass(frozen=True)
class BuiltModel:
    entry: ModelEntry
    engine: Engine


def resolve_key(entry: UpstreamEntry, where: str, env: Mapping[str, str]) -> str | None:
    if entry.key_env is None:
        return None
    key = env.get(entry.key_env)
    if not key:
        raise ModelsFileError(f"{where}.key_env: the environment variable {entry.key_env} is not set")
    return key


def build(models: ModelsFile, env: Mapping[str, str] | None = None) -> list[BuiltModel]:
    """One engine per served model: the upstream itself, or a pool of its replicas."""
    env = os.environ if env is None else env
    built = []
    for i, model in enumerate(models.models):
        engines = [
            UpstreamEngine(u.config(), api_key=resolve_key(u, f"models[{i}].upstreams[{j}]", env))
            for j, u in enumerate(model.upstreams)
        ]
        engine: Engine = engines[0] if len(engines) == 1 else PoolEngine(model.id, engines)
        built.append(BuiltModel(model, engine))
    return built
