"""Command-line options to configurations: TrainConfig and SparsityConfig, and their fields' help."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect

from rigl import SparsityConfig
from train import TrainConfig, resolve_recipe


def comma_separated(text: str | None, kind: type) -> tuple | None:
    """"0.3,0.7" -> (0.3, 0.7); None stays None (the field's default), "" is the empty tuple."""
    return None if text is None else tuple(kind(p.strip()) for p in text.split(",") if p.strip())


def name_values(text: str | None, option: str) -> dict[str, float] | None:
    """"conv1.weight=1,fc.weight=0.5" -> {"conv1.weight": 1.0, "fc.weight": 0.5}; None and "" are None."""
    if text is None:
        return None
    found = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.rpartition("=")
        if not name.strip() or not is_number(value):
            raise ValueError(f"{option} takes NAME=DENSITY pairs separated by commas (e.g. "
                             f"conv1.weight=1,fc.weight=0.5), got {part!r}")
        if name.strip() in found:
            raise ValueError(f"{option} names {name.strip()} twice: give each layer one density")
        found[name.strip()] = float(value)
    return found or None


def is_number(text: str) -> bool:
    """Whether float() reads `text`."""
    try:
        float(text)
        return True
    except ValueError:
        return False


def configs_from_options(options: dict) -> tuple[TrainConfig, SparsityConfig]:
    """The train options as (TrainConfig, SparsityConfig), the dataset's recipe resolved."""
    values = {**options, "lr_milestones": comma_separated(options["lr_milestones"], float),
              "dense_layers": comma_separated(options["dense_layers"], str),
              "layer_densities": name_values(options.get("layer_densities"), "--layer-densities")}
    try:
        cfg = resolve_recipe(TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)}))
        sparse = {f.name: values[f.name] for f in dataclasses.fields(SparsityConfig) if f.name in values}
        return cfg, SparsityConfig(**{**sparse, "seed": cfg.seed})  # not extra_weights: our models need none
    except ValueError as error:  # "lr_gamma must ..." as the user wrote it: "--lr-gamma must ..."
        field, _, rule = str(error).partition(" must ")
        raise ValueError(f"--{field.replace('_', '-')} must {rule}" if field in values and rule else str(error)) from None


@functools.cache
def field_docs(config: type) -> dict[str, str]:
    """The docstring under each field of a configuration dataclass, read from its source: the one
    text of an option's help."""
    body = ast.parse(inspect.getsource(config)).body[0].body
    return {field.target.id: " ".join(doc.value.value.split())
            for field, doc in zip(body, body[1:])
            if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)}


def help_of(config: type, field: str) -> str:
    """An option's help: its field's docstring."""
    return field_docs(config)[field]
