"""Recipes: ``pipelines/*.yaml`` files mapping command names to option defaults.

``hpa-pipe --config recipe.yaml CMD`` and ``hpa-pipe CMD --config recipe.yaml`` both set the
command's defaults (Click's ``default_map``); options on the command line still win. Every
command and option name is checked, and a typo names the nearest valid one, so a recipe is
never silently ignored.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import click

#: names other tools use for an option, so that a recipe's "did you mean" finds ours
ALIASES = {"learning_rate": "lr", "epoch": "epochs", "num_epochs": "epochs", "batch": "batch_size",
           "num_workers": "workers", "lr_schedule": "schedule", "scheduler": "schedule", "model": "arch",
           "pretrained": "weights", "image_size": "crop"}


def read_recipe(path: str, commands: dict[str, click.Command]) -> dict[str, dict]:
    """The recipe at ``path`` as ``{command name: {option name: value}}``, every name checked
    against ``commands``; names may be written with ``_`` or ``-``."""
    import yaml

    from ..common.yaml_files import load_yaml

    try:
        recipe = load_yaml(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read recipe {path}: {exc}", param_hint="--config") from None
    if not isinstance(recipe, dict) or not all(isinstance(v, dict) for v in recipe.values()):
        raise click.BadParameter(f"{path}: a recipe maps command names to option mappings", param_hint="--config")
    checked = {}
    for section, options in recipe.items():
        name = str(section).replace("_", "-")
        if name not in commands:
            near = difflib.get_close_matches(name, commands, n=1)
            raise click.BadParameter(f"{path}: unknown command {section!r}" + (f"; did you mean {near[0]!r}?" if near
                                     else f"; commands: {', '.join(commands)}"), param_hint="--config")
        _check_options(path, section, options, commands[name])
        checked[name] = {str(k).replace("-", "_"): v for k, v in options.items()}
    return checked


def _check_options(path: str, section, options: dict, command: click.Command) -> None:
    params = {p.name: p for p in command.params if p.name and not p.name.startswith("config")}
    valid = set(params)
    for key, value in options.items():
        wanted = str(key).replace("-", "_")
        if wanted in params:
            _check_value(path, section, key, value, params[wanted])
        if wanted not in valid:
            near = [ALIASES[wanted]] if ALIASES.get(wanted) in valid else difflib.get_close_matches(wanted, valid, n=1)
            raise click.BadParameter(
                f"{path}: {section}: unknown option {key!r}"
                + (f"; did you mean {near[0]!r}?" if near else f"; options: {', '.join(sorted(valid))}"),
                param_hint="--config")


def _check_value(path: str, section, key, value, param: click.Parameter) -> None:
    """A recipe value is a plain scalar (a list of them for a repeatable option); Click then
    checks it as it checks the command line."""
    scalar = (str, int, float, bool, type(None))
    multiple = getattr(param, "multiple", False)
    if not (isinstance(value, scalar) or multiple and isinstance(value, list) and all(isinstance(v, scalar)
                                                                                   for v in value)):
        kind = "a single value or a list of them" if multiple else "a single value (a number, a word or true/false)"
        raise click.BadParameter(f"{path}: {section}: {key} is {type(value).__name__} {value!r:.80}; expected {kind}",
                                 param_hint="--config")
    for one in value if isinstance(value, list) else [value]:
        if one is None:  # the option's own default
            continue
        try:
            param.type.convert(one, param, None)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{path}: {section}: {key}: {exc.message}", param_hint="--config") from None


def _commands(ctx: click.Context) -> dict[str, click.Command]:
    return dict(ctx.find_root().command.commands)


def load_recipe(ctx, param, value):
    """Callback of the group's ``--config``: every command's defaults from the recipe."""
    if value is None:
        return None
    ctx.default_map = read_recipe(value, _commands(ctx))
    return value


def _load_command_recipe(ctx, param, value):
    """Callback of a command's own ``--config``: its section of the recipe."""
    if value is None:
        return None
    ctx.default_map = {**(ctx.default_map or {}), **read_recipe(value, _commands(ctx)).get(ctx.info_name, {})}
    return value


def recipe_option(fn):
    """``CMD --config recipe.yaml``: the recipe given after the command name."""
    return click.option("--config", "config_after", type=click.Path(exists=True, dir_okay=False),
                        callback=_load_command_recipe, is_eager=True, expose_value=False,
                        help="YAML recipe (see pipelines/) giving this command's option defaults; "
                             "may also come before the command name.")(fn)
