"""Command options generated from the settings models, so that a default, its help and its allowed
values are declared once (in pathnas.settings) and every command that sets them agrees.

``@settings_options(Model, ...)`` gives a command one option per field of ``Model`` (or the fields
named), each with the field's default and description; allowed values of a ``Literal`` field are
listed in its help. The command receives the validated model as its first argument (a bad value is
one ConfigError naming the option) and its own remaining options as keyword arguments.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from pydantic import BaseModel

from pathnas.settings import validated


def _cli_type(annotation: Any) -> tuple[Any, tuple[str, ...]]:
    """The type typer parses for a field, and the allowed values when the field lists them.

    Literals are read as text (pydantic checks them and names the allowed values); tuples as one
    comma-separated text (the models split it: `--formats onnx,openvino`); lists as a repeatable option."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner, allowed = _cli_type(next(a for a in args if a is not type(None)))
        return Optional[inner], allowed
    if origin is typing.Literal:
        return str, tuple(map(str, args))
    if origin is tuple:
        return str, ()
    if origin is list:  # a repeatable option
        return list[typing.get_args(annotation)[0]], ()
    if annotation in (int, float, bool, str, Path):
        return annotation, ()
    raise TypeError(f"no command-line form for a field of type {annotation!r}")  # a programming error


def settings_option(model: type[BaseModel], field: str, *decls: str, **overrides) -> inspect.Parameter:
    """One typer option for ``model.field``: its default and help from the model."""
    info = model.model_fields[field]
    default = ... if info.is_required() else info.get_default(call_default_factory=True)
    return _option(field, info.annotation, default, info.description or "", decls, overrides)


def _option(field: str, annotation: Any, default: Any, help_text: str, decls: tuple[str, ...],
            overrides: dict) -> inspect.Parameter:
    annotation, allowed = _cli_type(annotation)
    default = overrides.pop("default", default)
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    help_text = overrides.pop("help", help_text)
    if allowed and not any(a in help_text for a in allowed):
        help_text = f"{help_text} ({', '.join(allowed)})".strip()
    if annotation is bool and not decls:
        flag = "--" + field.replace("_", "-")
        decls = (flag,) if default is False else (f"{flag}/--no-{flag[2:]}",)
    option = typer.Option(default, *decls, help=help_text, **overrides)
    return inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def settings_options(model: type[BaseModel], fields: tuple[str, ...] | None = None, *, what: str | None = None,
                     options: dict[str, dict] | None = None, into: str | None = None) -> Callable:
    """Decorate a command: the model's fields (or ``fields``) become options, and the command receives the
    validated model as its parameter ``into`` (default: its first parameter). Decorators stack, one model each.

    ``options`` maps a field to what its option changes: ``decls`` (other spellings), ``help``,
    ``rich_help_panel``, ``min``/``max``, ``default``..."""
    names = tuple(fields) if fields is not None else tuple(model.model_fields)
    options = options or {}

    def decorate(command: Callable) -> Callable:
        params = list(inspect.signature(command, eval_str=True).parameters.values())
        target = into or params[0].name
        own = [p for p in params if p.name != target]
        generated = [settings_option(model, f, *options.get(f, {}).get("decls", ()),
                                     **{k: v for k, v in options.get(f, {}).items() if k != "decls"})
                     for f in names]

        @functools.wraps(command)
        def wrapper(**values):
            settings = validated(model, what, **{f: values.pop(f) for f in names})
            return command(**{target: settings}, **values)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer must read the generated signature, not the command's own
        return wrapper

    return decorate


def record_options(record: type, *, into: str) -> Callable:
    """Decorate a command: the fields of ``record`` (a torch-free dataclass of the workstation runtime, with
    its help texts in ``record.HELP``, e.g. deploy/regress_check.py:RegressCheck) become options, and the
    command receives the record (which checks itself: a ConfigError naming the option) as ``into``."""
    hints = typing.get_type_hints(record)
    fields = dataclasses.fields(record)

    def decorate(command: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != into]
        generated = [_option(f.name, hints[f.name], f.default, record.HELP[f.name], (), {}) for f in fields]

        @functools.wraps(command)
        def wrapper(**values):
            return command(**{into: record(**{f.name: values.pop(f.name) for f in fields})}, **values)

        parameters = own + generated
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__
        return wrapper

    return decorate
