"""Loading :class:`Settings`: defaults < TOML file < ``GLMIX_*`` environment < ``--set`` overrides.

The sources are merged into one nested table that msgspec converts into the frozen
:class:`Settings`, checking every bound the schema declares. Its error names a path
(``Expected `int` >= 1 - at `$.joiner.batch_size```, with ``[...]`` for a table entry);
:func:`_config_error` turns it into one :class:`ConfigError` line naming the dotted key
(``config key 'joiner.batch_size': must be >= 1, got 0``).
"""

from __future__ import annotations

import functools
import re
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
import msgspec.inspect as mi

from stream.config.exceptions import ConfigError
from stream.config.settings import LARGEST, Settings, default_coordinates

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

ENV_PREFIX = "GLMIX_"

_CLIENT_MAPS = {"client", "producer", "consumer", "admin", "schema_registry"}
# Maps whose keys are dotted property names passed on unchanged: librdkafka's, and Spark's ([refit.spark]).
_PASSTHROUGH_MAPS = {("kafka", name) for name in _CLIENT_MAPS} | {("refit", "spark")}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults < TOML file < ``GLMIX_*`` env < ``overrides``.

    ``env`` is the environment to read (pass ``os.environ``); ``overrides`` maps dotted keys
    (``kafka.bootstrap_servers``) to string values, as given by ``--set`` on the command line.
    """
    raw: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    model = raw.setdefault("model", {})
    if isinstance(model, dict) and "coordinates" not in model:
        # A file that lists coordinates defines the whole set; otherwise the built-in
        # member and job coordinates are there for env and --set to adjust.
        model["coordinates"] = {name: {} for name in default_coordinates()}
    for name, value in (env or {}).items():
        if name.startswith(ENV_PREFIX):
            parts = name[len(ENV_PREFIX) :].lower().split("__")
            if len(parts) == 3 and tuple(parts[:2]) in _PASSTHROUGH_MAPS:
                parts[2] = parts[2].replace("_", ".")  # GLMIX_KAFKA__CLIENT__SASL_MECHANISM: sasl.mechanism
            _merge(raw, _nested(".".join(parts), value, origin=name))
    for key, value in (overrides or {}).items():
        _merge(raw, _nested(key, value))
    coordinates = raw["model"].get("coordinates") if isinstance(raw["model"], dict) else None
    for name, builtin in default_coordinates().items():  # [model.coordinates.member] may set single keys
        if isinstance(coordinates, dict) and isinstance(coordinates.get(name), dict):
            coordinates[name] = {**msgspec.to_builtins(builtin), **coordinates[name]}
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _config_error(exc, raw) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("--config", f"file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc


def _nested(key: str, text: str, origin: str | None = None) -> dict[str, Any]:
    """``("metrics.history_edges", "1,5")`` -> ``{"metrics": {"history_edges": ["1", "5"]}}``.

    The text is read as far as the setting's type needs before msgspec converts it: a list
    setting is comma-separated, a boolean is true/false, 1/0 or yes/no (any case). A librdkafka
    or Spark property name keeps its dots (``kafka.client.sasl.mechanism``).
    """
    parts = key.split(".")
    if len(parts) > 3 and tuple(parts[:2]) in _PASSTHROUGH_MAPS:
        parts = parts[:2] + [".".join(parts[2:])]
    if not all(parts):
        raise ConfigError(origin or key, "malformed key")
    kind = _base(_hint_at(parts))
    value: Any = text
    if kind is bool and text.lower() in _TRUE + _FALSE:
        value = text.lower() in _TRUE
    elif typing.get_origin(kind) is tuple:
        value = [item.strip() for item in text.split(",")]
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged = dict(base[key])
            _merge(merged, value)
            base[key] = merged
        else:
            base[key] = value


def _base(hint: Any) -> Any:
    """``hint`` without its ``Annotated`` constraints."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


@functools.cache
def _field_types(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """A struct's field types (msgspec resolves the annotations anew at every call)."""
    return {f.name: f.type for f in msgspec.structs.fields(struct)}


def _step(hint: Any, part: str) -> Any:
    """The type one key below ``hint``: a struct's field, or a table's values; None where nothing is."""
    kind = _base(hint)
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return _field_types(kind).get(part)
    if typing.get_origin(kind) is Mapping:
        return typing.get_args(kind)[1]
    return None


def _hint_at(parts: list[str]) -> Any:
    hint: Any = Settings
    for part in parts:
        hint = _step(hint, part)
    return hint


_MISSING = object()
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)
_PATH_STEP = re.compile(r"\.(\w+)|\[(\.\.\.|\d+)\]")
_NOUNS = {
    mi.IntType: "an integer",
    mi.FloatType: "a number",
    mi.StrType: "a string",
    mi.BoolType: "true or false",
    mi.VarTupleType: "a list",
    mi.DictType: "a table",
    mi.StructType: "a table",
    mi.UnionType: "a string, number or boolean",
}


def _config_error(exc: msgspec.ValidationError, raw: dict[str, Any]) -> ConfigError:
    """msgspec's error as one line naming the dotted key, as a user would write it in the TOML file."""
    found = _AT.match(str(exc))
    assert found is not None  # the pattern matches any text
    message, path = found["message"], found["path"] or ""
    keys, hint, value = _locate(path, raw)
    if isinstance(exc.__cause__, ConfigError):  # a rule of __post_init__, its key relative to the struct
        return ConfigError(".".join([*keys, exc.__cause__.key]), exc.__cause__.problem)
    if unknown := re.fullmatch(r"Object contains unknown field `(.+)`", message):
        known = ", ".join(sorted(_field_types(_base(hint))))
        return ConfigError(".".join([*keys, unknown[1]]), f"unknown key (known: {known})")
    if missing := re.fullmatch(r"Object missing required field `(.+)`", message):
        return ConfigError(".".join([*keys, missing[1]]), "required: it has no default")
    return ConfigError(".".join(keys) or "<root>", _problem(hint, value, message))


def _locate(path: str, raw: Any) -> tuple[list[str], Any, Any]:
    """The dotted key parts, the type and the given value at msgspec's ``path``.

    msgspec writes a table entry as ``[...]``: the entry is the one of the given table
    that fails on its own. A list index is dropped: the key names the whole list.
    """
    keys: list[str] = []
    hint: Any = Settings
    value = raw
    for name, index in _PATH_STEP.findall(path):
        if name:
            keys.append(name)
            hint = _step(hint, name)
            value = value.get(name, _MISSING) if isinstance(value, Mapping) else _MISSING
        elif index == "...":
            hint = _step(hint, "")
            key, value = next(
                ((str(k), v) for k, v in (value.items() if isinstance(value, Mapping) else ()) if _fails(v, hint)),
                ("?", _MISSING),
            )
            keys.append(key)
        else:
            hint = typing.get_args(_base(hint))[0]
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else _MISSING
    return keys, hint, value


def _fails(value: Any, hint: Any) -> bool:
    try:
        msgspec.convert(value, hint, strict=False)
    except msgspec.ValidationError:
        return True
    return False


def _problem(hint: Any, value: Any, message: str) -> str:
    """What is wrong with ``value`` of type ``hint``, in the words of the type's declared bounds."""
    info = mi.type_info(hint)
    described = (info.extra_json_schema or {}).get("description") if isinstance(info, mi.Metadata) else None
    kind = info.type if isinstance(info, mi.Metadata) else info
    got = "" if value is _MISSING else f", got {value!r}"
    if isinstance(kind, mi.LiteralType):
        return f"must be one of {', '.join(map(repr, typing.get_args(_base(hint))))}{got}"
    if re.fullmatch(r"Expected `[^`]+`, got `[^`]+`", message):
        return f"expected {_NOUNS.get(type(kind), 'another type')}{got}"
    if isinstance(kind, (mi.IntType, mi.FloatType)):
        try:  # the number as read: "-1" for a float setting is -1.0
            got = f", got {msgspec.convert(value, int if isinstance(kind, mi.IntType) else float, strict=False)!r}"
        except msgspec.ValidationError:
            pass
        return f"must be {described or _bounds(kind)}{got}"
    if described:
        return f"must be {described}{got}"
    return f"{message[:1].lower()}{message[1:]}{got}"


def _bounds(kind: mi.IntType | mi.FloatType) -> str:
    """``>= 1``, ``in (0, 1]`` or ``a finite number > 0``: the bounds msgspec checked, as a phrase."""
    ge = None if kind.ge == -LARGEST else kind.ge  # the largest float as a bound only refuses nan and inf
    le = None if kind.le == LARGEST else kind.le
    finite = "a finite number " if (ge, le) != (kind.ge, kind.le) else ""
    low = f"[{ge}" if ge is not None else f"({kind.gt}" if kind.gt is not None else ""
    high = f"{le}]" if le is not None else f"{kind.lt})" if kind.lt is not None else ""
    if low and high:
        return f"{finite}in {low}, {high}"
    if low:
        return f"{finite}{'>=' if low[0] == '[' else '>'} {low[1:]}"
    if high:
        return f"{finite}{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    return finite.strip()
