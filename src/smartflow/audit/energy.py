"""Energy (Wh) and CO2e (g) estimates for a call, from the coefficients in
``smartflow/data/energy.toml`` (where the formula and its sources are written)."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class EnergyClass:
    name: str
    patterns: tuple[str, ...]
    input_wh_per_1k: float
    output_wh_per_1k: float


class EnergyModel:
    """Looks a model up once (then remembers it) and turns tokens into Wh and g."""

    __slots__ = ("_by_model", "_classes", "_default", "_grid", "_pue")

    def __init__(self, classes: tuple[EnergyClass, ...], default: EnergyClass,
                 pue: float, grid_gco2e_per_kwh: float) -> None:
        self._classes = classes
        self._default = default
        self._pue = pue
        self._grid = grid_gco2e_per_kwh
        self._by_model: dict[str, EnergyClass] = {}

    def class_of(self, model: str) -> EnergyClass:
        found = self._by_model.get(model)
        if found is None:
            lowered = model.lower()
            found = next((c for c in self._classes
                          if any(fnmatch.fnmatchcase(lowered, p) for p in c.patterns)),
                         self._default)
            if len(self._by_model) < 4096:  # model names come from callers: stay bounded
                self._by_model[model] = found
        return found

    def estimate(self, model: str, prompt_tokens: int, completion_tokens: int
                 ) -> tuple[float, float]:
        """(energy in Wh, CO2e in g), rounded to a useful precision."""
        cls = self.class_of(model)
        wh = (prompt_tokens * cls.input_wh_per_1k
              + completion_tokens * cls.output_wh_per_1k) / 1000.0 * self._pue
        return round(wh, 6), round(wh / 1000.0 * self._grid, 6)


def _class(name: str, table: dict[str, object]) -> EnergyClass:
    patterns = table.get("patterns", [])
    assert isinstance(patterns, list)
    return EnergyClass(name, tuple(str(p).lower() for p in patterns),
                       float(table["input_wh_per_1k"]),  # type: ignore[arg-type]
                       float(table["output_wh_per_1k"]))  # type: ignore[arg-type]


def load_energy_model(text: str | None = None) -> EnergyModel:
    """The packaged coefficients (or ``text``, a document in the same format)."""
    if text is None:
        text = resources.files("smartflow").joinpath("data/energy.toml").read_text("utf-8")
    document = tomllib.loads(text)
    classes = tuple(_class(str(c["name"]), c) for c in document.get("classes", []))
    return EnergyModel(classes, _class("default", document["default"]),
                       float(document["pue"]), float(document["grid_gco2e_per_kwh"]))
