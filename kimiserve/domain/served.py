"""Served models: one canonical id and its aliases, the engine behind it and its price."""

from __future__ import annotations

from dataclasses import dataclass

from kimiserve.engines.base import Engine
from kimiserve.errors import NotFound
from kimiserve.platform.prices import Price

KIMI_ID = "kimi-k2.6"
KIMI_ALIASES = ("moonshotai:kimi@2.6", "moonshotai-kimi-k2-6", "kimi-k2.6")


@dataclass(frozen=True)
class ServedModel:
    id: str
    aliases: tuple[str, ...]
    engine: Engine
    price: Price
    owned_by: str = "kimiserve"
    served_by: str | None = None  # the small local model answering for this one (a stand-in), if any

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *[a for a in self.aliases if a != self.id])


class ServedModels:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = list(models)
        self._by_name: dict[str, ServedModel] = {}
        for model in self._models:
            for name in model.names:
                self._by_name[name] = model

    def resolve(self, name: str) -> ServedModel:
        model = self._by_name.get(name)
        if model is None:
            known = ", ".join(sorted(self._by_name))
            raise NotFound(
                f"Unknown model {name!r}. Served models: {known}.",
                code="invalidModel",
                parameter="model",
            )
        return model

    def knows(self, name: str) -> bool:
        return name in self._by_name

    def models(self) -> list[ServedModel]:
        return list(self._models)

    def engines(self) -> list[Engine]:
        seen: dict[int, Engine] = {}
        for model in self._models:
            seen.setdefault(id(model.engine), model.engine)
        return list(seen.values())


def with_stand_ins(served: list[ServedModel], embedded: ServedModel, kimi_price: Price) -> ServedModels:
    """The served models: those configured (`served`) first, then the embedded model under its own
    id unless one took it. When no configured model answers for Kimi K2.6's names, the embedded
    model answers for them as a local stand-in (at Kimi's prices), said plainly wherever models
    are listed (`served_by`)."""
    models = list(served)
    taken = {name for model in served for name in model.names}
    if KIMI_ID not in taken and not taken.intersection(KIMI_ALIASES):
        models.append(
            ServedModel(
                id=KIMI_ID,
                aliases=KIMI_ALIASES,
                engine=embedded.engine,
                price=kimi_price,
                owned_by="moonshotai",
                served_by=embedded.id,
            )
        )
    if embedded.id not in taken:
        models.append(embedded)
    return ServedModels(models)
