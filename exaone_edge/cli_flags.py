"""Typer flags made from the engine's settings (exaone_edge/engine_settings.py, where each is declared once):
run, serve, bench, validate and plan each take the ones they use (`@engine_flags(...)`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from exaone_edge.engine_settings import EngineSettings, Flag, flag_fields, parse_setting


def _annotation(flag: Flag) -> Any:
    kind = flag.kind if flag.parse is None else str
    return Annotated[kind | None, typer.Option(*flag.names, help=flag.help)]


def engine_flags(*names: str, given_only: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Adds the named settings' flags to a typer command (before its --json). The command receives
    `engine: EngineSettings` (flags over defaults), or with `given_only` a dict of the flags given on the command line
    (serve layers EXAONE_EDGE_* variables under them)."""
    declared = flag_fields()
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise ValueError(f"unknown engine settings {unknown}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "engine"]
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_annotation(declared[name]),
                                   default=None) for name in names]
        last = [p for p in own if p.name == "json_output"]
        parameters = [p for p in own if p.name != "json_output"] + added + last

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {}
            for name in names:
                value = kwargs.pop(name)
                if value is not None:
                    given[name] = parse_setting(name, value) if isinstance(value, str) else value
            return command(*args, engine=given if given_only else EngineSettings(**given), **kwargs)

        wrapper.__signature__ = inspect.Signature(parameters)  # what typer reads
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def settings_flags(model: Any, *, skip: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Adds a flag for every described field of a pydantic settings model (its description is the help; the name is
    the field's, a trailing `_s` dropped); the command receives `given`: the flags given, by field name."""
    import types
    import typing

    def annotation(name: str, info: Any) -> Any:
        hint = typing.get_type_hints(model)[name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if union else hint
        flag = "--" + name.removesuffix("_s").replace("_", "-")
        shown = f"{info.default:,}" if isinstance(info.default, int) and not isinstance(info.default, bool) else info.default
        help_ = info.description + (f" [default: {shown}]" if info.default not in (None, (), False) else "")
        if typing.get_origin(base) is tuple:  # repeatable
            return Annotated[list[typing.get_args(base)[0]] | None, typer.Option(flag, help=help_)]
        if base is bool:
            return Annotated[bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help_)]
        return Annotated[base | None, typer.Option(flag, help=help_)]

    fields_ = {name: info for name, info in model.model_fields.items() if info.description and name not in skip}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "given"]
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation(name, info),
                                   default=None) for name, info in fields_.items()]
        parameters = own[:1] + added + own[1:]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in fields_}
            given = {name: tuple(value) if isinstance(value, list) else value
                     for name, value in given.items() if value is not None and value != []}
            return command(*args, given=given, **kwargs)

        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
