"""Screens and variants of a model: which folds it trains (``folds: all | [0, 2, ...]``) and the
settings it is tried with (``variants: {KEY: [v1, v2, ...]}``). The Snakefile expands each model
with variants into one model per combination before any job (:func:`expand_variants`), so every
later stage sees plain models; :func:`model_folds` says which folds each trains.

A variant's name is the model's, then ``__KEY-VALUE`` per key in sorted order (e.g.
``rtmdet__img_scale-320x320__lr-0.004``): the same settings give the same name, so editing one
value renames (and retrains) only the variants that have it. A ``cfg_options.DOTTED.KEY`` variant
sets that entry of the model's ``cfg_options`` and is named by the key's last part.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

from detfold.core.config import ConfigError, load_schema, schema_problems, with_defaults

#: A variant's name is a folder under results/ and part of every job's name: at most this long
MAX_MODEL_NAME = 80
#: Model settings that are not tried as variants: the variants themselves and the folds trained
NOT_VARIED = ("variants", "folds")
CFG_OPTIONS = "cfg_options."


def model_folds(settings: dict[str, Any], k: int) -> list[int]:
    """The folds a model trains, predicts and is scored on: its ``folds`` setting, all by default."""
    chosen = settings.get("folds", "all")
    return list(range(k)) if chosen == "all" else sorted(set(chosen))


def _value_text(value: Any) -> str:
    """A setting's value as a piece of a folder name: [320, 320] -> 320x320, lists of lists joined
    by +, a path by its file name's stem, other characters than letters, digits, _ . + - as -
    (and __, which separates a name's parts, as _)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        nested = any(isinstance(v, list | tuple) for v in value)
        return ("+" if nested else "x").join(_value_text(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}-{_value_text(v)}" for k, v in value.items())
    text = str(value)
    if "/" in text:
        text = text.rstrip("/").rsplit("/", 1)[-1].removesuffix(".py")
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9_.+-]", "-", text))


def _key_text(key: str) -> str:
    return key.rsplit(".", 1)[-1] if key.startswith(CFG_OPTIONS) else key


def variant_name(model: str, combination: Sequence[tuple[str, Any]]) -> str:
    """``model__KEY-VALUE__...`` of one combination of (key, value), in sorted order."""
    parts = sorted(f"{_key_text(k)}-{_value_text(v)}" for k, v in combination)
    return "__".join([model, *parts])


def _with_value(settings: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    if key.startswith(CFG_OPTIONS):
        options = {**(settings.get("cfg_options") or {}), key[len(CFG_OPTIONS) :]: value}
        return {**settings, "cfg_options": options}
    return {**settings, key: value}


def _key_problems(model: str, variants: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Variant keys that are no model setting, keys also set by the model itself, and empty lists."""
    known = [
        k for k in load_schema()["properties"]["models"]["additionalProperties"]["properties"] if k not in NOT_VARIED
    ]
    problems = []
    for key, values in variants.items():
        where = f"models.{model}.variants.{key}"
        if key.startswith(CFG_OPTIONS) and len(key) > len(CFG_OPTIONS):
            option = key[len(CFG_OPTIONS) :]
            if option in (settings.get("cfg_options") or {}):
                problems.append(
                    f"{where}: cfg_options.{option} is also set in models.{model}.cfg_options; set it in one place"
                )
        elif key not in known:
            problems.append(
                f"{where}: {key!r} is not a model setting; a variant varies one of {', '.join(known)} "
                "or a cfg_options entry (cfg_options.DOTTED.KEY)"
            )
        elif key in settings and key != "config":  # config is required: a variant's replaces it
            problems.append(f"{where}: {key} is also set in models.{model}.{key}; set it in one place")
        if not values:
            problems.append(f"{where} = []: no value to try; give at least one or remove the key")
    texts = [_key_text(k) for k in variants]
    for key, text in zip(variants, texts, strict=True):
        if texts.count(text) > 1:
            other = next(k for k, t in zip(variants, texts, strict=True) if t == text and k != key)
            problems.append(
                f"models.{model}.variants.{key}: named {text!r} in a variant's name, as {other} is; vary one"
            )
            break
    return problems


def _expand_one(model: str, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One model's variants by name, each with the model's other settings. Raises
    :class:`ConfigError` when two combinations read the same as a name."""
    variants = settings["variants"]
    base = {k: v for k, v in settings.items() if k != "variants"}
    expanded: dict[str, dict[str, Any]] = {}
    combinations: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*variants.values()):
        combination = dict(zip(variants, values, strict=True))
        name = variant_name(model, list(combination.items()))
        if name in combinations:
            key = next((k for k, v in combination.items() if combinations[name][k] != v), next(iter(combination)))
            raise ConfigError(
                [
                    f"models.{model}.variants.{key}: {combinations[name][key]!r} and {combination[key]!r} "
                    f"give the same variant name {name!r} (a value given twice, or two that read the same); "
                    "make them differ"
                ]
            )
        grown = base
        for key, value in sorted(combination.items()):  # the same settings dict in any key order
            grown = _with_value(grown, key, value)
        expanded[name], combinations[name] = grown, combination
    return expanded


def _fold_problems(config: dict[str, Any], k: int) -> list[str]:
    """``folds`` lists with folds past K or given twice, and a run where no model trains every
    fold (the ensemble is chosen among the models that do)."""
    problems, full = [], []
    for model, settings in config["models"].items():
        chosen = settings.get("folds", "all")
        if chosen == "all":
            full.append(model)
            continue
        outside = [f for f in chosen if f >= k]
        if outside:
            problems.append(
                f"models.{model}.folds = {chosen}: fold {outside[0]} does not exist with folds.k = {k} (0 .. {k - 1})"
            )
        if len(set(chosen)) != len(chosen):
            problems.append(f"models.{model}.folds = {chosen}: a fold is given twice")
        if set(chosen) == set(range(k)):
            full.append(model)
    shared = set.intersection(*(set(model_folds(s, k)) for s in config["models"].values()))
    if not shared and not problems:
        listed = ", ".join(f"{m} {s.get('folds', 'all')}" for m, s in config["models"].items())
        problems.append(
            f"models: no fold is trained by every model ({listed}); the leaderboard compares the models on the "
            "val images of the folds they all train: give the screens a fold in common"
        )
    if not full and not problems:
        problems.append(
            "models: every model trains only some folds (folds: [...]); the ensemble is chosen among models that "
            "train every fold: set folds: all (the default) on at least one"
        )
    return problems


def expand_variants(config: dict[str, Any]) -> list[str]:
    """Replace each model with variants by one model per combination, in place (the model's
    other settings inherited, ``variants`` removed), and return the new names. Raises
    :class:`ConfigError` naming the key for an unknown variant key, a name taken twice or too
    long, a value the schema refuses, and ``folds`` that the run cannot train."""
    models = config["models"]
    problems: list[str] = []
    expanded: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for model, settings in models.items():
        if "variants" not in settings:
            expanded[model] = settings
            continue
        key_problems = _key_problems(model, settings["variants"], settings)
        problems += key_problems
        if not key_problems:
            grown = _expand_one(model, settings)
            expanded |= grown
            origin |= dict.fromkeys(grown, f"models.{model}.variants")
    taken = {name: f"models.{name}" for name in models} | {
        e.get("name"): "ensemble.external" for e in (config.get("ensemble") or {}).get("external") or []
    }
    for name, where in origin.items():
        if name in taken:
            problems.append(f"{where}: the variant name {name!r} is taken by {taken[name]}; rename one of them")
        if len(name) > MAX_MODEL_NAME:
            problems.append(
                f"{where}: the variant name {name!r} is {len(name)} characters, more than {MAX_MODEL_NAME}: "
                "shorten the model's name or the values (a name is a folder and part of every job's name)"
            )
    if problems:
        raise ConfigError(problems)
    config["models"] = expanded
    if origin:  # the values a variant set, checked by the schema as if written in the model
        problems = [q for p in schema_problems(config, load_schema()) if (q := _at_origin(p, origin))]
    problems += _fold_problems(config, with_defaults(config)["folds"]["k"])
    if problems:
        raise ConfigError(problems)
    return sorted(origin)


def _at_origin(problem: str, origin: dict[str, str]) -> str | None:
    """A schema problem of a variant (``models.NAME.key ...``) said of the variants it came from;
    None for any other problem (the config was checked before it was expanded)."""
    for name, where in origin.items():
        if problem.startswith(f"models.{name}.") or problem.startswith(f"models.{name}:"):
            return f"{where} (variant {name}): {problem}"
    return None
