"""Read a TOML configuration and report every problem with file, key, line and a suggestion."""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from router.config.locate import Loc, key_lines, line_of
from router.config.model import Config, DimseDestination, HubDestination, StowDestination
from router.errors import ConfigError

DEFAULT_CONFIG_TOML = """\
# Waystation's embedded default configuration, used by `waystation run` without --config.
[unit]
name = "waystation-demo"
ae_title = "WAYSTATION"

[ingest]
listen = "127.0.0.1:11112"
allowed_callers = []

[spool]
path = "var/spool"
min_free = "1 GiB"
"""


def load_config(path: Path) -> Config:
    """Load and validate ``path``; relative paths become relative to the file's folder.

    Raises ConfigError listing every problem as ``file:line: key: message``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such configuration file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the configuration file: {exc}"]) from None
    return parse_config(text, source=str(path), base=path.resolve().parent)


def load_default_config(base: Path) -> Config:
    """Return the embedded default configuration with paths relative to ``base``."""
    return parse_config(DEFAULT_CONFIG_TOML, source="<embedded default>", base=base)


def parse_config(text: str, *, source: str, base: Path) -> Config:
    """Parse and validate a configuration text; see load_config."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: TOML syntax error: {exc}"]) from None
    lines = key_lines(text)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            [_describe(source, lines, error) for error in exc.errors(include_url=False)]
        ) from None
    problems = [
        _locate(source, lines, loc, message) for loc, message in _cross_reference_problems(config)
    ]
    if problems:
        raise ConfigError(problems)
    return config.resolve_paths(base)


def _cross_reference_problems(config: Config) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    for i, dest in enumerate(config.destinations):
        if dest.name in seen:
            problems.append((("destinations", i, "name"), f"destination {dest.name!r} repeated"))
        seen.add(dest.name)
    routes_seen: set[str] = set()
    for i, route in enumerate(config.routes):
        if route.name in routes_seen:
            problems.append((("routes", i, "name"), f"route {route.name!r} repeated"))
        routes_seen.add(route.name)
        for target in route.to:
            if target not in seen:
                hint = _suggest(target, sorted(seen))
                known = ", ".join(sorted(seen)) or "none are configured"
                problems.append(
                    (
                        ("routes", i, "to"),
                        f"no destination named {target!r}{hint} (destinations: {known})",
                    )
                )
    return problems


_DESTINATION_TYPES: dict[str, Any] = {
    "dimse": DimseDestination,
    "hub": HubDestination,
    "stow": StowDestination,
}
_DESTINATION_UNION = object()  # marks "inside destinations[i], before its type"


def _describe(source: str, lines: dict[Loc, int], error: Any) -> str:
    # "[key]" marks an error in a table's key (an attribute keyword): report the key itself.
    tagged: Loc = tuple(part for part in error["loc"] if part != "[key]")
    # A destination's errors carry its type ("dimse", "hub") after its index: people never
    # wrote that key, so it is left out of what they read.
    loc: Loc = tuple(
        part
        for i, part in enumerate(tagged)
        if not (i >= 2 and tagged[i - 2] == "destinations" and part in _DESTINATION_TYPES)
    )
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _fields_at(tagged[:-1])
        where = f" in [{_dotted(loc[:-1])}]" if loc[:-1] else " at the top level"
        message = f"unknown key {key!r}{where}{_suggest(key, allowed)}"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return _locate(source, lines, loc, message)


def _locate(source: str, lines: dict[Loc, int], loc: Loc, message: str) -> str:
    line = line_of(lines, loc)
    where = f"{source}:{line}" if line else source
    return f"{where}: {_dotted(loc) or '(file)'}: {message}"


def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed at ``loc``, found by walking the model's annotations."""
    model: Any = Config
    in_table = False  # the next part is a key of a table of models (when.attributes.X)
    for part in loc:
        if isinstance(part, int) or in_table:
            in_table = False
            continue
        if model is _DESTINATION_UNION:
            model = _DESTINATION_TYPES.get(str(part))
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        in_table = typing.get_origin(field.annotation) is dict
        model = _DESTINATION_UNION if part == "destinations" else _innermost_model(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _innermost_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _innermost_model(arg)
            if found is not None:
                return found
    return None
