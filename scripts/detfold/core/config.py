"""The config gate, run by the Snakefile before any job: :func:`check_schema` names each schema
violation's key, bad value and what is allowed (with a "did you mean"); :func:`check_feasible`
catches what a schema cannot: missing files, absent test images, more folds than images, an
unknown mmdet config, relative paths that leave the working folder.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib.util
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from detfold.analyze import OOF_ENSEMBLE
from detfold.core.io import parse_yaml, read_json
from detfold.evaluate.stats import NESTED_PARTS  # light: numpy only

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """One or more problems with the configuration, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the configuration has {len(problems)} problem(s); nothing was run:\n{lines}")


def _key(path: Any) -> str:
    return ".".join(map(str, path)) or "(top level)"


def _suggest(word: str, choices: list[str]) -> str:
    same_but_case = [c for c in map(str, choices) if c.lower() == str(word).lower()]
    close = same_but_case or difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(error: Any) -> list[str]:
    """jsonschema error -> problem lines naming key, value and what is allowed."""
    key = _key(error.absolute_path)
    schema, value, kind = error.schema, error.instance, error.validator
    if kind == "additionalProperties" and error.validator_value is False:
        allowed = sorted(schema.get("properties", {}))
        listed = f"(allowed under {key}: {', '.join(allowed)})"
        return [
            f"unknown key {_key([*error.absolute_path, name])!r}{_suggest(name, allowed)} {listed}"
            for name in sorted(set(value) - set(allowed))
        ]
    if kind in ("oneOf", "anyOf") and error.context:  # e.g. fold_fusion: 'search' or fusion settings
        deeper = [e for e in error.context if e.validator not in ("const", "type")]
        if deeper:  # the value has the shape of one branch: what is wrong inside it
            return [line for e in deeper for line in _describe(e)]
        return [f"{key} = {value!r} is not allowed: {schema.get('description', error.message)}"]
    if kind == "required":
        return [f"{key}: required key {name!r} is missing" for name in error.validator_value if name not in value]
    if kind == "enum":
        allowed = list(error.validator_value)
        hint = _suggest(value, allowed) if isinstance(value, str) else ""
        return [f"{key} = {value!r} is not allowed{hint} (allowed values: {', '.join(map(str, allowed))})"]
    if kind == "type":
        return [_wrong_type(key, value, error.validator_value, schema)]
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return [f"{key} = {value!r} is out of range: must be {bounds[kind]} {error.validator_value}"]
    counts = {"minItems": "at least", "maxItems": "at most"}
    if kind == "minItems" and value == []:
        what = schema.get("description", "")
        return [f"{key} = [] is empty: list at least one value, or leave the key out" + (f" ({what})" if what else "")]
    if kind in counts:
        return [f"{key} = {value!r} must have {counts[kind]} {error.validator_value} item(s)"]
    if kind == "minProperties":
        return [f"{key} needs at least {error.validator_value} entry (got none)"]
    if kind == "pattern":
        what = schema.get("description", "")
        return [f"{key} = {value!r} does not match {error.validator_value!r}" + (f" ({what})" if what else "")]
    return [f"{key} = {value!r}: {error.message}"]


#: YAML's words for JSON schema's types
TYPE_WORDS = {"array": "a list", "object": "a mapping (key: value)", "null": "null"}


def _wrong_type(key: str, value: Any, expected: str | list[str], schema: dict[str, Any]) -> str:
    """A value of the wrong type, with the likely slip: null (an empty value, or a lone ~), a
    number in quotes, a model's settings not written as a mapping."""
    kinds = expected if isinstance(expected, list) else [expected]
    words = " or ".join(TYPE_WORDS.get(k, k) for k in kinds)
    if value is None:
        hint = "; a lone ~ is null in YAML, not the home folder" if "string" in kinds else ""
        out = "give a value, or leave the key out for its default" if "default" in schema else "give a value"
        return f"{key} is empty (null): expected {words}; {out}{hint}"
    line = f"{key} = {value!r} has the wrong type: expected {words}"
    if isinstance(value, str) and {"number", "integer"} & set(kinds):
        with contextlib.suppress(ValueError):
            number = float(value)
            if isinstance(yaml.safe_load(value), (int, float)):
                return f"{line}; write it without quotes: {value.strip()}"
            if math.isfinite(number):
                written = int(number) if number.is_integer() and "integer" in kinds else number
                return f"{line}; YAML reads {value.strip()} as text: write {written}"
    if key.startswith("models.") and key.count(".") == 1 and "object" in kinds:
        name = key.split(".", 1)[1]
        return (
            f"{line}: a model's settings, e.g. {name}: {{config: path/to/config.py, epochs: 12}} "
            "(settings written right under models: need a model name above them)"
        )
    return line


#: The largest integer numpy, torch and numba take (a YAML integer has no limit)
INT64_MAX = 2**63 - 1
#: Settings handed on as they are (to mmdet, to wandb): their numbers are not detfold's to judge
PASSED_ON = ("cfg_options", "wandb")


def _number_problems(node: Any, path: list[Any]) -> Iterator[str]:
    """Numbers no schema range catches: NaN and infinities (YAML's .nan and .inf pass every
    minimum and maximum) and integers past 64 bits."""
    if isinstance(node, dict):
        for name, value in node.items():
            if not (len(path) == 2 and path[0] == "models" and name in PASSED_ON):
                yield from _number_problems(value, [*path, name])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _number_problems(value, [*path, i])
    elif isinstance(node, float) and not math.isfinite(node):
        yield f"{_key(path)} = {node!r} is not a finite number"
    elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > INT64_MAX:
        yield f"{_key(path)} = {node!r} is out of range: a 64-bit integer is at most {INT64_MAX}"


def schema_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every schema violation of ``config`` as one readable line, in key order."""
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    # an integer is written as one: 5.0 would pass JSON schema's "integer" and break range(k) later
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    validator = jsonschema.validators.extend(base, type_checker=checker)(schema)
    problems: list[str] = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        if "propertyNames" in error.schema_path:  # a bad name (of a model): reported on its parent
            rule = error.schema.get("description") or f"match {error.validator_value!r}"
            problems.append(f"{_key(error.absolute_path)}: name {error.instance!r} must be {rule}")
            continue
        problems += _describe(error)
    named = {p.split(" ", 1)[0] for p in problems}
    problems += [p for p in _number_problems(config, []) if p.split(" ", 1)[0] not in named]
    if not problems:  # well-formed: now the settings that the chosen method would ignore
        problems += setting_problems(config)
    return list(dict.fromkeys(problems))


def check_schema(config: dict[str, Any], schema_path: str | os.PathLike[str]) -> None:
    """Raise :class:`ConfigError` listing every schema violation of ``config`` and, so that one
    try shows them all, the feasibility problems already visible (missing files, ...)."""
    problems = schema_problems(config, load_schema(schema_path))
    if problems:
        with contextlib.suppress(Exception):  # a config too broken to look further shows its schema problems
            problems += [p for p in feasibility_problems(config) if p not in problems]
        raise ConfigError(problems)


#: numpy's seeds (np.random.seed, mmengine's set_random_seed) are 0 .. 2**32 - 1
SEED_MAX = 2**32 - 1


def setting_problems(config: dict[str, Any]) -> list[str]:
    """What a schema-valid ``config`` says that the run could not do, read from the settings
    alone (no file): an audit action its check does not take, a seed that the last fold's
    seed + k pushes out of numpy's range, an external model named like another member, and
    settings that the chosen method would ignore."""
    from detfold.audit.checks import check_rule

    filled = with_defaults(config)
    problems = []
    for name, spec in (config.get("audit", {}).get("checks") or {}).items():
        try:
            check_rule(name, spec)  # the audit's own check of a rule: ranges and actions defined there
        except ValueError as err:
            problems.append(str(err))
    seed, k = filled["seed"], filled["folds"]["k"]
    if seed + k - 1 > SEED_MAX:
        problems.append(
            f"seed = {seed} is out of range with folds.k = {k}: fold {k - 1} trains with seed + {k - 1} = "
            f"{seed + k - 1}, past numpy's {SEED_MAX}; use a seed <= {SEED_MAX - k + 1}"
        )
    taken = {name: f"models.{name}" for name in config["models"]}
    for i, spec in enumerate(filled["ensemble"]["external"]):
        if spec["name"] in taken:
            problems.append(
                f"ensemble.external[{i}].name = {spec['name']!r} is taken by {taken[spec['name']]}: "
                "every member of the ensemble needs its own name"
            )
        taken.setdefault(spec["name"], f"ensemble.external[{i}]")
    return problems + _ignored_settings(config, filled)


def _ignored_settings(config: dict[str, Any], filled: dict[str, Any]) -> list[str]:
    """Settings the chosen method would ignore (set in ``config``, or other than the default in
    ``filled``): a WBF conf_type with another fusion method, balance weights with another fold
    method, TTA merge settings with one view."""
    problems = []
    ensemble, defaults = filled["ensemble"], schema_defaults()
    if ensemble["method"] != "wbf" and ensemble["conf_type"] != defaults["ensemble"]["conf_type"]:
        problems.append(
            f"ensemble.conf_type = {ensemble['conf_type']!r} does nothing with ensemble.method = "
            f"{ensemble['method']!r} (conf_type is WBF's); remove it or set method: wbf"
        )
    fixed = config.get("ensemble", {}).get("fold_fusion")
    if isinstance(fixed, dict) and "conf_type" in fixed and fixed.get("method", "wbf") != "wbf":
        problems.append(
            f"ensemble.fold_fusion.conf_type = {fixed['conf_type']!r} does nothing with "
            f"ensemble.fold_fusion.method = {fixed['method']!r} (conf_type is WBF's); remove it or set method: wbf"
        )
    folds = filled["folds"]
    if folds["method"] != "balanced" and folds["weights"] != defaults["folds"]["weights"]:
        problems.append(
            f"folds.weights = {folds['weights']} does nothing with folds.method = {folds['method']!r} "
            "(the weights are the balanced method's); remove them or set method: balanced"
        )
    tta = config.get("predict", {}).get("tta")
    if tta is not None and not tta.get("flip") and list(tta.get("scales", [1.0])) == [1.0]:
        given = sorted(set(tta) & {"merge", "iou_thr"})
        if given:
            problems.append(
                f"predict.tta.{given[0]} = {tta[given[0]]!r} does nothing: predict.tta has one view (no flip, "
                "scales [1.0]), nothing to merge; add flip: true or more scales, or remove predict.tta"
            )
    return problems


def setting_warnings(config: dict[str, Any]) -> list[str]:
    """Settings ignored by the method chosen, where a value merged from config/config.yaml
    may be why (so a warning, not an error): a search conf_type list with no WBF searched."""
    search = (config.get("ensemble") or {}).get("search") or {}
    if search.get("conf_type") and "method" in search and "wbf" not in search["method"]:
        return [
            f"ensemble.search.conf_type = {search['conf_type']} does nothing: ensemble.search.method = "
            f"{search['method']} searches no wbf (conf_type is WBF's)"
        ]
    return []


SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path: str | os.PathLike[str] = SCHEMA) -> dict[str, Any]:
    """The config's JSON schema: every key, its type and its default."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with the schema's defaults where a key is left out (nested objects and
    list items included), as Snakemake's ``validate`` fills them in; no default is written elsewhere."""
    import jsonschema

    schema = load_schema()
    base = jsonschema.validators.validator_for(schema)
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict[str, Any], instance: Any, node: dict[str, Any]) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop:
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from check_properties(validator, properties, instance, node)

    filled = copy.deepcopy(config)
    list(jsonschema.validators.extend(base, {"properties": set_defaults})(schema).iter_errors(filled))  # fills in
    return filled


def schema_defaults() -> dict[str, Any]:
    """Every default of the schema, nested as in config.yaml (e.g. ``["folds"]["k"]``)."""
    return with_defaults({})


def model_gpus(settings: dict[str, Any]) -> int:
    """GPUs, hence distributed processes, of one training job of a model (``gpus``, default 1:
    models' keys have no schema default, so that leaving one out never changes a model's params)."""
    return int(settings.get("gpus", 1))


def config_paths(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, path) of every file or folder the config names."""
    data = config.get("data", {})
    for name in ("train_annotations", "train_images", "test_annotations", "test_images", "class_names"):
        if data.get(name):
            yield f"data.{name}", data[name]
    if config.get("audit", {}).get("overrides"):
        yield "audit.overrides", config["audit"]["overrides"]
    group_by = config.get("folds", {}).get("group_by") or ""
    if group_by.startswith("csv:"):
        yield "folds.group_by", group_by[4:]
    for model, settings in (config.get("models") or {}).items():
        if not str(settings.get("config", "")).startswith("mmdet::"):
            yield f"models.{model}.config", settings["config"]
        for key in ("load_from", "backbone_weights"):
            if isinstance(settings.get(key), str):
                yield f"models.{model}.{key}", settings[key]
    for i, spec in enumerate(config.get("ensemble", {}).get("external") or []):
        for name in ("oof", "test", "id_source"):
            if spec.get(name):
                yield f"ensemble.external[{i}].{name}", spec[name]


def mmdet_config_path(config: str) -> Path | None:
    """Where ``mmdet::family/name.py`` lives in the installed mmdet (not imported); None without mmdet."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / ".mim" / "configs" / config[len("mmdet::") :]


def _coco_images(path: str | os.PathLike[str]) -> list[Any]:
    """The ``images`` list of a COCO file; ValueError when it is not JSON or has none."""
    coco = read_json(path)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError(f"{path}: not a COCO detection file (no 'images' list)")
    return coco["images"]


def _count_train_images(data: dict[str, Any], path: Path) -> int:
    if data["format"] == "coco":
        return len(_coco_images(path))
    suffix = ".xml" if data["format"] == "voc" else ".txt"
    return sum(1 for p in path.iterdir() if p.suffix == suffix)


def _test_image_problems(data: dict[str, Any]) -> list[str]:
    """The test file (COCO, or a list of file names) unreadable, or naming images the folder lacks."""
    listed = str(data["test_annotations"]).endswith(".txt")
    if data["format"] != "coco" and not listed:
        return []
    try:
        if listed:
            lines = Path(data["test_annotations"]).read_text(encoding="utf-8-sig").splitlines()
            names = [n.strip() for n in lines if n.strip() and not n.strip().startswith("#")]
        else:
            images = _coco_images(data["test_annotations"])
            names = [str(image.get("file_name", "")) for image in images if isinstance(image, dict)]
    except ValueError as err:
        return [f"data.test_annotations: {err}"]
    absent = [name for name in names if not (Path(data["test_images"]) / name).is_file()]
    if not absent:
        return []
    shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
    return [f"data.test_images = {data['test_images']!r}: {len(absent)} test image(s) absent: {shown}"]


def feasibility_problems(config: dict[str, Any]) -> list[str]:
    """What would make the run fail later although the config is schema-valid (defaults filled in)."""
    config = with_defaults(config)
    problems, missing = _path_problems(config)
    problems += _model_problems(config)
    problems += _ensemble_problems(config)
    group_by = str(config["folds"]["group_by"] or "")
    if group_by.startswith("regex:"):
        try:
            re.compile(group_by[len("regex:") :])
        except re.error as err:
            problems.append(f"folds.group_by = {group_by!r}: not a valid regular expression ({err})")
    if "data.train_annotations" not in missing:
        problems += _train_file_problems(config)
    problems += _input_file_problems(config, missing)
    data = config["data"]
    if data.get("test_annotations") and not data.get("test_images"):
        problems.append("data.test_images: missing; it is needed with data.test_annotations (the test image folder)")
    elif data.get("test_annotations") and not missing & {"data.test_annotations", "data.test_images"}:
        problems += _test_image_problems(data)
    return problems


def _path_problems(config: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Paths the config names that leave the working folder or do not exist (as a file or
    folder, as expected), and the keys of those missing."""
    root = Path.cwd().resolve()
    problems: list[str] = []
    folders = {"data.train_images", "data.test_images"}
    if config["data"]["format"] != "coco":
        folders.add("data.train_annotations")
        if not str(config["data"].get("test_annotations", "")).endswith(".txt"):  # an image list is a file
            folders.add("data.test_annotations")
    missing: set[str] = set()
    for key, value in config_paths(config):
        path = Path(value)
        want_dir = key in folders
        if value.startswith("~"):
            problems.append(
                f"{key} = {value!r}: ~ is not expanded here (Snakemake takes paths as written); "
                f"write the full path, e.g. {os.path.expanduser(value)!r}"
            )
            missing.add(key)
        elif not path.is_absolute() and not (root / path).resolve().is_relative_to(root):
            problems.append(f"{key} = {value!r} leaves the working folder {root}; give an absolute path if you mean it")
        elif path.is_file() if want_dir else path.is_dir():
            kinds = ("a file", "a folder") if want_dir else ("a folder", "a file")
            problems.append(f"{key} = {value!r} is {kinds[0]}; expected {kinds[1]}{_kind_hint(key, config)}")
            missing.add(key)
        elif want_dir and not path.is_dir():
            problems.append(f"{key} = {value!r}: folder not found")
            missing.add(key)
        elif not want_dir and not path.is_file():
            weights = key.endswith(("load_from", "backbone_weights"))
            what = "checkpoint not found (weights are never downloaded)" if weights else "file not found"
            problems.append(f"{key} = {value!r}: {what}")
            missing.add(key)
    return problems, missing


def _kind_hint(key: str, config: dict[str, Any]) -> str:
    """Why a data key wants a file or a folder: the format decides for the annotations."""
    if key in ("data.train_annotations", "data.test_annotations"):
        return {
            "coco": " (format coco: a COCO JSON file)",
            "voc": " (format voc: a folder of XML files)",
            "yolo": " (format yolo: a folder of txt labels)",
        }[config["data"]["format"]]
    return ""


def _model_problems(config: dict[str, Any]) -> list[str]:
    """Model names detfold keeps for itself, and mmdet configs that are not there."""
    problems = []
    for model, settings in (config.get("models") or {}).items():
        if model == OOF_ENSEMBLE:
            problems.append(f"models.{model}: this name is taken by the error analysis of the models fused; rename it")
        name = str(settings.get("config", ""))
        if name.startswith("mmdet::"):
            path = mmdet_config_path(name)
            if path is not None and not path.is_file():
                problems.append(f"models.{model}.config = {name!r}: no such config in the installed mmdet ({path})")
        elif not name.endswith(".py"):
            problems.append(f"models.{model}.config = {name!r}: expected an mmdet config file (.py) or mmdet::name.py")
    return problems


#: The keys of an image record imported from VOC or YOLO (detfold.audit.convert)
IMPORTED_IMAGE_KEYS = ("id", "file_name", "width", "height")


def _train_file_problems(config: dict[str, Any]) -> list[str]:
    """The train file unreadable, more folds than it has images, or a ``group_by: field:NAME``
    that its image records lack."""
    data = config["data"]
    try:
        if data["format"] == "coco":
            images = _coco_images(data["train_annotations"])
            n_images = len(images)
        else:
            n_images = _count_train_images(data, Path(data["train_annotations"]))
            images = [dict.fromkeys(IMPORTED_IMAGE_KEYS)] * n_images
    except ValueError as err:
        return [f"data.train_annotations: {err}"]
    return _fold_count_problems(config, n_images) + _group_field_problems(config, images)


def _group_field_problems(config: dict[str, Any], images: list[Any]) -> list[str]:
    """``folds.group_by: field:NAME`` naming a key that image records of the train file lack."""
    group_by = str(config["folds"]["group_by"] or "")
    if not group_by.startswith("field:") or not images:
        return []
    name = group_by[len("field:") :]
    records = [im for im in images if isinstance(im, dict)]
    lacking = [im for im in records if name not in im]
    if not lacking:
        return []
    have = sorted({key for im in records for key in im}, key=str)
    where = f"the image records of {config['data']['train_annotations']}"
    if len(lacking) == len(records):
        return [f"folds.group_by = {group_by!r}: no image record has a {name!r} key ({where} have: {', '.join(have)})"]
    ids = [im.get("id") for im in lacking[:5]]
    return [f"folds.group_by = {group_by!r}: {len(lacking)} of {len(records)} {where[4:]} lack {name!r} (ids {ids})"]


def _input_file_problems(config: dict[str, Any], missing: set[str]) -> list[str]:
    """YOLO labels without class names, and the class names and audit overrides files read by
    the readers the import and the audit use (so their messages are the same)."""
    from detfold.audit.checks import read_overrides
    from detfold.audit.convert import read_class_names

    data, problems = config["data"], []
    if data["format"] == "yolo" and not data.get("class_names"):
        problems.append(
            "data.class_names: missing; format yolo needs it (a text file of class names, one per line, "
            "in class index order: line 1 is class 0)"
        )
    elif data.get("class_names") and "data.class_names" not in missing:
        try:
            read_class_names(data["class_names"], by_line=data["format"] == "yolo")
        except (OSError, ValueError) as err:
            problems.append(f"data.class_names: {err}")
    overrides = config["audit"].get("overrides")
    if overrides and "audit.overrides" not in missing:
        try:
            read_overrides(overrides)
        except (OSError, ValueError) as err:
            problems.append(f"audit.overrides: {err}")
    return problems


def _fold_count_problems(config: dict[str, Any], n_images: int) -> list[str]:
    """More folds than the training images left besides the blend split, or a blend split too
    small for the nested selection."""
    data = config["data"]
    problems = []
    k, share = config["folds"]["k"], float(config["folds"]["blend_share"])
    n_blend = n_images // max(2, round(1 / share))
    if k > n_images - n_blend:
        problems.append(
            f"folds.k = {k} is more than the {n_images - n_blend} training images of "
            f"{data['train_annotations']} left for the folds besides the blend split ({n_blend})"
        )
    if n_blend < NESTED_PARTS:
        problems.append(
            f"folds.blend_share = {share} sets aside about {n_blend} of {n_images} training images: nested "
            f"selection on the blend split needs at least {NESTED_PARTS}; raise folds.blend_share"
        )
    return problems


def _ensemble_problems(config: dict[str, Any]) -> list[str]:
    """Ensemble settings that would fail only after every model trained: search weight vectors
    of the wrong length, external prediction files in another format than stated."""
    from detfold.core.variants import model_folds

    ensemble = config.get("ensemble") or {}
    external = ensemble.get("external") or []
    k = int(config["folds"]["k"])  # a float k is reported by the schema check
    fused = [m for m, settings in (config.get("models") or {}).items() if len(model_folds(settings, k)) == k]
    members = len(fused) + len(external)
    problems = [
        f"ensemble.search.weights[{i}] = {w!r} has {len(w)} weights for {members} members "
        "(the models that train every fold in name order, then the external ones)"
        for i, w in enumerate((ensemble.get("search") or {}).get("weights") or [])
        if isinstance(w, list) and len(w) != members
    ]
    for i, spec in enumerate(external):
        fmt = spec["format"]
        for split in ("oof", "test"):
            path = spec.get(split)
            if not path or not Path(path).is_file():
                continue
            with open(path, encoding="utf-8-sig", errors="replace") as handle:
                head = handle.read(4096).lstrip()
            looks = "coco" if head.startswith("[") else "csv" if "PredictionString" in head.split("\n", 1)[0] else None
            if looks != fmt:
                seen = (
                    f"looks like {looks}" if looks else "is neither a COCO results list nor a CSV with PredictionString"
                )
                problems.append(f"ensemble.external[{i}].{split} = {path!r}: format is {fmt} but the file {seen}")
    return problems


def check_feasible(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every problem :func:`feasibility_problems` finds."""
    problems = feasibility_problems(config)
    if problems:
        raise ConfigError(problems)


def config_file_problems(path: str | os.PathLike[str]) -> list[str]:
    """A config file that is not a YAML (or JSON) mapping, with the line and what is wrong, or
    that gives a key twice in one mapping, with both lines."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return [f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8"]
    root, problems = parse_yaml(text, str(path))
    if problems and root is None:
        with contextlib.suppress(ValueError):
            json.loads(text)  # Snakemake reads a config as JSON first
            return []
        return problems
    if not problems and not isinstance(root, dict):
        got = "empty" if root is None else "a list" if isinstance(root, list) else f"just {root!r}"
        return [f"{path}: a config is a mapping of keys (seed: 42, data: ..., models: ...); this file is {got}"]
    return problems


def check_config_files(paths: list[str | os.PathLike[str]]) -> None:
    """Raise :class:`ConfigError` with every :func:`config_file_problems` of the config files
    that exist (Snakemake names a missing one itself)."""
    problems = [p for path in paths if Path(path).is_file() for p in config_file_problems(path)]
    if problems:
        raise ConfigError(problems)


DEMO_DATA = "tests/data/bccd"  # the bundled demo's data, named by config/config.yaml


def drop_disabled_models(config: dict[str, Any]) -> list[str]:
    """Remove the models set to null (``models: {rtmdet_tiny: null}``), and return their names: how a
    ``--configfile``, which Snakemake merges over config/config.yaml, leaves out a model of that file."""
    models = config.get("models")
    if not isinstance(models, dict):
        return []
    dropped = sorted(name for name, settings in models.items() if settings is None)
    for name in dropped:
        del models[name]
    return dropped


def config_warnings(config: dict[str, Any], default_config: str | os.PathLike[str] = "config/config.yaml") -> list[str]:
    """The demo's data beside the user's own, or the demo's models with the user's data: what
    Snakemake's merge of ``--configfile`` over config/config.yaml leaves in a user's config."""
    paths = {key.removeprefix("data."): path for key, path in config_paths(config) if key.startswith("data.")}
    demo = sorted(key for key, value in paths.items() if DEMO_DATA in str(value))
    if demo and len(demo) == len(paths):
        return []  # the demo itself
    warnings = [
        f"data.{key} is still the bundled demo's ({paths[key]}) while other data keys are your own: Snakemake "
        "merges --configfile over config/config.yaml (add --replace-workflow-config to use your file alone), "
        "or set every data key in your file"
        for key in demo
    ]
    if Path(default_config).is_file():
        default_models = (yaml.safe_load(Path(default_config).read_text(encoding="utf-8")) or {}).get("models") or {}
        for name, settings in sorted((config.get("models") or {}).items()):
            if name in default_models and (settings or {}).get("config") == (default_models[name] or {}).get("config"):
                warnings.append(
                    f"models.{name} is the demo's model from {default_config} and will be trained on your data "
                    f"too (Snakemake merges --configfile over it): add --replace-workflow-config to use your file "
                    f"alone, or write `{name}: null` under models to leave it out"
                )
    return warnings


def warn_merged_config(config: dict[str, Any], merged: bool) -> list[str]:
    """Log and return :func:`setting_warnings` and, when a ``--configfile`` was ``merged`` over
    config/config.yaml, :func:`config_warnings`."""
    warnings = setting_warnings(config) + (config_warnings(config) if merged else [])
    for line in warnings:
        log.warning("detfold: %s", line)
    return warnings
