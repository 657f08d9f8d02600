"""The machinery under litefs.yml's schema: a YAML document → frozen dataclasses, with the
one-line errors users see. It knows no litefs key: config/__init__.py declares them.

A *section* is a dataclass. Its fields are its keys (the field name in kebab-case, or
`metadata["key"]`; `""` for a field no file sets), a field's default is the key's default and
`Annotated[T, parse]` names the function that reads the value (plain `str`, `str | None` and
`bool` fields use `text`, `opt_text` and `flag`). A section class may also have
`_EXPECTED` (what an error says it should be), `_HINT` (added to that error), `_FILE_ONLY`
(keys that are not fields: key → the key it is listed after), `from_file_keys(mapping)` (rules
between its keys, before its fields are read) and `checked(self)` (rules after).

Problems raise `Problem` (and its kinds) with the path below the section being read; the
schema adds the path above as the problem leaves each value, and `Schema.structure` turns it
into `QuietError(message, ExitCode.CONFIG)`: "KEY in FILE: what is wrong; the fix".
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    NoReturn,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from ..errors import ExitCode, QuietError

if TYPE_CHECKING:
    import yaml


def error(message: str) -> QuietError:
    return QuietError(message, ExitCode.CONFIG)


def show_value(value: object) -> str:
    """A value for an error message: YAML-ish, one line, at most ~60 characters."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def kind(value: object) -> str:
    if value is None:
        return "null"
    for types, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                        (str, "a string"), (Mapping, "a mapping"), (list | tuple, "a list")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def is_secret(key: str) -> bool:
    """Keys whose values never appear in error messages."""
    return key.endswith(("secret", "secret-access-key"))


Step = str | int  # a mapping key or a list index in a key path
Detail = str | Callable[[str], str]  # a message, or one made from its section's path


class Problem(Exception):
    """A problem with one value: `at` is its path below the section being read, `above` the
    path of that section (filled in by the schema as the problem leaves each value)."""

    def __init__(self, detail: Detail, at: tuple[Step, ...] = ()) -> None:
        super().__init__(detail)
        self.detail, self.at = detail, at
        self.above: tuple[Step, ...] = ()

    def describe(self, here: str, key: str) -> str:
        """`here`: the path of the section that raised it; `key`: the full key path."""
        return self.detail(here) if callable(self.detail) else self.detail


class WrongType(Problem):
    def __init__(self, value: object, expected: str, hint: Detail = "",
                 at: tuple[Step, ...] = ()) -> None:
        super().__init__(expected, at)
        self.value, self.hint = value, hint

    def describe(self, here: str, key: str) -> str:
        shown = "a value" if is_secret(key) else show_value(self.value)
        hint = self.hint(here) if callable(self.hint) else self.hint
        return f"expected {self.detail}, got {shown} ({kind(self.value)}){hint}"


class UnknownKey(Problem):
    def __init__(self, key: str, allowed: Sequence[str]) -> None:
        super().__init__("", (key,))
        self.allowed = allowed


class NotYet(Problem):
    """A key that parses but is refused for now: `detail` says what to do instead."""

    def __init__(self, instead: str, value: object = None, at: tuple[Step, ...] = ()) -> None:
        super().__init__(instead, at)
        self.value = value


def read_at(at: tuple[Step, ...], parse: Callable[[Any], Any], value: object) -> Any:
    """`parse(value)` for the key at `at` below the section being read."""
    try:
        return parse(value)
    except Problem as exc:
        exc.at = at + exc.at
        raise


def unknown_key_message(prefix: str, key: str, allowed: Sequence[str], where: str) -> str:
    """`unknown key fuse.dri in FILE; did you mean fuse.dir?`, or the valid keys there."""
    def norm(k: str) -> str:  # camelCase / snake_case / any case → kebab-case
        return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", k).replace("_", "-").lower()

    by_norm = {norm(a): a for a in allowed}
    close = difflib.get_close_matches(norm(key), list(by_norm), n=1, cutoff=0.6)
    match = by_norm.get(norm(key)) or (by_norm[close[0]] if close else None)
    msg = f"unknown key {join(prefix, key)}{where}; "
    if match is not None:
        return msg + f"did you mean {join(prefix, match)}?"
    place = f"under {prefix}" if prefix else "at the top level"
    return msg + f"valid keys {place}: {', '.join(allowed)}"


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_SIZE_UNITS = {"": 1, "b": 1} | {
    unit: base**power
    for power, letter in enumerate("kmgt", 1)
    for unit, base in ((letter, 1000), (letter + "b", 1000), (letter + "i", 1024),
                       (letter + "ib", 1024))
}
_DURATION_HINT = "expected a duration like 500ms, 1s, 5m, 1h or 1h30m"
_SIZE_HINT = "expected a size like 100k, 64MiB or 1GB (bytes if no unit)"


def parse_duration(value: str | int | float) -> float:
    """`1s`, `500ms`, `5m`, `1h`, `1h30m`, `2d` → seconds. A bare number is only accepted for 0.

    Raises ValueError with the reason; the loader turns it into a QuietError naming the key.
    """
    if isinstance(value, bool):
        raise ValueError(_DURATION_HINT)
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"{_DURATION_HINT} (a number needs a unit, e.g. {value}s)")
    text = value.strip()
    if text in ("0", "0.0"):
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            if re.fullmatch(r"\d+(\.\d*)?", text):
                raise ValueError(f"{_DURATION_HINT} (a number needs a unit, e.g. {text}s)")
            raise ValueError(_DURATION_HINT)
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(_DURATION_HINT)
    return total


def parse_size(value: str | int) -> int:
    """`100k` (1000-based), `64MiB` / `64Mi` (1024-based), `1GB`, plain integers → bytes."""
    if isinstance(value, bool):
        raise ValueError(_SIZE_HINT)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(_SIZE_HINT)
        return value
    m = _SIZE_RE.fullmatch(value.strip().lower())
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise ValueError(_SIZE_HINT)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


class Expanded(str):
    """A string that had a variable substituted: `true`/`false` in it may fill a boolean."""

    __slots__ = ()


BOOL_WORDS = {
    "true": True, "yes": True, "on": True, "1": True,
    "false": False, "no": False, "off": False, "0": False,
}  # fmt: skip


def text(value: object) -> str:
    """A string key: given, and not empty (leaving the key out gives its default)."""
    if not isinstance(value, str):
        raise WrongType(value, "a string", "; quote it" if isinstance(value, int | float) else "")
    if value == "":
        raise Problem("must not be empty (leave the key out for the default)")
    return str(value)


def opt_text(value: object) -> str | None:
    """An optional string key: empty (e.g. `${VAR:-}` with VAR unset) means not set."""
    return None if value == "" else text(value)


def flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, Expanded) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    hint = ""
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        hint = "; write it without quotes"
    raise WrongType(value, "true or false", hint)


def duration(value: object, *, positive: bool = True) -> float:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise WrongType(value, "a duration like 1s, 500ms, 5m or 1h")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise Problem(f"invalid duration {show_value(value)}: {exc}") from None
    if positive and seconds <= 0:
        raise Problem(f"must be longer than 0, got {show_value(value)}")
    return seconds


def duration_or_0(value: object) -> float:
    return duration(value, positive=False)


def rate_or_0(value: object) -> float:
    """Events per second: a number (`4.5`), or `N/s`, `N/m`, `N/h`; 0 means no limit."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise WrongType(value, "a rate like 4.5, 5/s or 300/m")
    per = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    text_value = str(value).strip().lower().replace(" ", "")
    number, _, unit = text_value.partition("/")
    try:
        rate = float(number) / per[unit or "s"]
    except (ValueError, KeyError):
        raise Problem(f"invalid rate {show_value(value)}; expected a number per second, or "
                      "N/s, N/m, N/h (0: no limit)") from None
    if not rate >= 0 or rate == float("inf"):
        raise Problem(f"must be 0 (no limit) or more, got {show_value(value)}")
    return rate


def count(value: object) -> int:
    """A whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongType(value, "a whole number like 5")
    if value < 1:
        raise Problem(f"must be 1 or more, got {show_value(value)}")
    return int(value)


def size(value: object) -> int:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise WrongType(value, "a size like 64MiB, 1GB or 100k")
    try:
        nbytes = parse_size(value)
    except ValueError as exc:
        raise Problem(f"invalid size {show_value(value)}: {exc}") from None
    if nbytes <= 0:
        raise Problem(f"must be more than 0 bytes, got {show_value(value)}")
    return nbytes


def address(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise WrongType(value, "an address like ':20202'", f"; write ':{value}'")
    addr = text(value)
    _host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Problem(f"invalid address {show_value(addr)}; expected [host]:port, e.g. ':20202'")
    return addr


def choice(*choices: str, aliases: Mapping[str, str] | None = None,
           coming: Mapping[str, str] | None = None) -> Callable[[object], str]:
    """One of `choices` in any case, or an alias of one; a value in `coming` is refused with
    NotYet and what to do instead."""
    spellings = {c: c for c in choices} | dict(aliases or {})

    def parse(value: object) -> str:
        got = text(value).strip().lower()
        if coming and got in coming:
            raise NotYet(coming[got], value)
        if got not in spellings:
            raise Problem(f"invalid value {show_value(value)}; expected one of: "
                          f"{', '.join(choices)}")
        return spellings[got]

    return parse


def argv(value: object) -> tuple[str, ...]:
    """A command: a string split like a shell would (no shell runs it) or a list of
    arguments."""
    if isinstance(value, str):
        try:
            args = shlex.split(value)
        except ValueError as exc:
            raise Problem(f"cannot split {show_value(value)} into arguments: {exc}") from None
    elif isinstance(value, list):
        for i, arg in enumerate(value):
            if not isinstance(arg, str):
                hint = ("; quote it" if isinstance(arg, int | float) else
                        " (don't mix argument strings and {cmd: ...} entries)")
                raise WrongType(arg, "a string (an argument)", hint, at=(i,))
        args = [str(a) for a in value]
    else:
        raise WrongType(value, "a command string or a list of arguments")
    if not args:
        raise Problem("the command is empty")
    return tuple(args)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def file_key(f: dataclasses.Field[Any]) -> str:
    key: str = f.metadata.get("key", f.name.replace("_", "-"))
    return key


def file_keys(cls: type) -> list[str]:
    """The keys a section accepts, in the order error messages list them."""
    keys = [file_key(f) for f in dataclasses.fields(cls) if file_key(f)]
    for extra, after in getattr(cls, "_FILE_ONLY", {}).items():
        keys.insert(keys.index(after) + 1 if after else 0, extra)
    return keys


_READERS: dict[Any, Callable[[object], object]] = {str: text, str | None: opt_text, bool: flag}


def parser_of(t: Any) -> Callable[[object], object] | None:
    """The parse function named in `Annotated[T, parse]`, if `t` is one."""
    if get_origin(t) is not Annotated:
        return None
    return next((m for m in t.__metadata__ if callable(m)), None)


class Schema:
    """The sections of one kind of file; `root` is the top-level one (an empty file is its
    defaults). `read` walks a YAML document through them."""

    def __init__(self, root: type, sections: Sequence[type]) -> None:
        self.root, self.sections = root, tuple(sections)
        self._fields: dict[type, list[tuple[str, str, Any]]] = {}

    def fields(self, cls: type) -> list[tuple[str, str, Any]]:
        """(attribute name, file key, type) of each field a file sets."""
        if cls not in self._fields:
            hints = get_type_hints(cls, include_extras=True)
            self._fields[cls] = [(f.name, file_key(f), hints[f.name])
                                 for f in dataclasses.fields(cls) if file_key(f)]
        return self._fields[cls]

    def read(self, value: object, t: Any, at: tuple[Step, ...] = ()) -> Any:
        """`value` (not null) as a `t`: a section, `tuple[T, ...]`, `T | None`, `str`,
        `str | None`, `bool`, a Literal, or `Annotated[T, parse]`. A Problem raised on the way
        gets `at` in front of the path of its section."""
        try:
            parse = parser_of(t)
            if parse is not None:
                return parse(value)
            if t in self.sections:
                return self._section(value, t)
            if get_origin(t) is tuple:
                assert isinstance(value, list), "parsers hand over lists"
                return tuple(self.read(v, get_args(t)[0], (i,)) for i, v in enumerate(value))
            if t in _READERS:
                return _READERS[t](value)
            if get_origin(t) in (UnionType, Union):  # `Section | None`: null never gets here
                return self.read(value, next(a for a in get_args(t) if a is not type(None)))
            if get_origin(t) is Literal:
                assert value in get_args(t), "sections choose their Literal values"
                return value
            raise TypeError(f"the schema has no reader for {t}")
        except Problem as exc:
            exc.above = at + exc.above
            raise

    def _section(self, value: object, cls: type) -> Any:
        """A mapping with only the section's keys (null is the same as absent), its own
        rules, its required keys, then its fields."""
        if isinstance(value, cls):  # already read by a rule (e.g. replicas[0])
            return value
        if value is None and cls is self.root:
            value = {}  # an empty file
        if not isinstance(value, dict):
            hint = getattr(cls, "_HINT", "")
            raise WrongType(value, getattr(cls, "_EXPECTED", "a mapping"),
                            hint(value) if callable(hint) else hint)
        allowed = file_keys(cls)
        for k in value:
            if not isinstance(k, str):
                raise Problem(f"keys must be strings, got {show_value(k)} ({kind(k)})",
                              at=(str(k),))
            if k not in allowed:
                raise UnknownKey(k, allowed)
        m = {k: v for k, v in value.items() if v is not None}
        if hasattr(cls, "from_file_keys"):
            m = cls.from_file_keys(m)
        for f in dataclasses.fields(cls):
            required = f.default is f.default_factory is dataclasses.MISSING
            if required and file_key(f) not in m:
                raise Problem(f.metadata.get("missing", f"missing {file_key(f)}"))
        obj = cls(**{name: self.read(m[key], t, (key,))
                     for name, key, t in self.fields(cls) if key in m})
        return obj.checked() if hasattr(obj, "checked") else obj

    def structure(self, raw: object, t: Any, context: str,
                  keymap: Mapping[str, str] | None = None) -> Any:
        """`raw` as a `t`, or QuietError(CONFIG) naming the key (`keymap` renames the keys of
        a converted document back to the ones its author wrote)."""
        try:
            return self.read(raw, t)
        except Problem as exc:
            raise error(self._message(exc, context, keymap or {})) from None

    def keys(self, cls: type | None = None, prefix: str = "") -> list[str]:
        """Every key, as paths (`replica.sync-interval`, `dbs[].name`, `exec[].cmd`)."""
        cls = cls or self.root
        out: list[str] = []
        types = {key: t for _name, key, t in self.fields(cls)}
        for key in file_keys(cls):
            path = join(prefix, key)
            out.append(path)
            t = types.get(key)
            t = get_args(t)[0] if get_origin(t) is Annotated else t
            for section in (a for a in (t, *get_args(t)) if a in self.sections):
                out.extend(self.keys(section, path + ("[]" if get_origin(t) is tuple else "")))
        return out

    def _message(self, problem: Problem, context: str, keymap: Mapping[str, str]) -> str:
        here, key = (remap(path_of(steps), keymap)
                     for steps in (problem.above, problem.above + problem.at))
        where = f" in {context}" if context else ""
        if isinstance(problem, UnknownKey):
            return unknown_key_message(here, str(problem.at[-1]), problem.allowed, where)
        if isinstance(problem, NotYet):
            value = f" {show_value(problem.value)}" if problem.value is not None else ""
            return f"not supported yet: {key}{value}{where} — {problem.describe(here, key)}"
        detail = problem.describe(here, key)
        if not key:
            return f"{context}: {detail}" if context else detail
        return f"{key}{where}: {detail}"


def path_of(steps: Sequence[Step]) -> str:
    out = ""
    for step in steps:
        out = join(out, step)
    return out


def remap(key: str, keymap: Mapping[str, str]) -> str:
    """A key of a converted document → the key its author wrote (the longest match)."""
    for ours in sorted(keymap, key=len, reverse=True):
        if key == ours or key.startswith((ours + ".", ours + "[")):
            return keymap[ours] + key[len(ours):]
    return key


# --------------------------------------------------------------------------------------------
# ${VAR} expansion and reading YAML
# --------------------------------------------------------------------------------------------

_VAR_RE = re.compile(
    r"\$(?:(?P<escape>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<open>\{))"
)
_BRACED_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def expand_tree(value: object, env: Mapping[str, str], where: str,
                keymap: Mapping[str, str] | None = None, key: str = "") -> object:
    """`${NAME}`, `$NAME`, `${NAME:-default}` and `$$` in every string value (not in keys)."""
    if isinstance(value, str):
        return _expand(value, remap(key, keymap or {}), env, where)
    if isinstance(value, dict):
        return {k: expand_tree(v, env, where, keymap, join(key, str(k)))
                for k, v in value.items()}
    if isinstance(value, list):
        return [expand_tree(v, env, where, keymap, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _expand(value: str, key: str, env: Mapping[str, str], where: str) -> str:
    if "$" not in value:
        return value

    def fail(detail: str) -> NoReturn:
        raise error(f"{key}{where}: {detail}")

    substituted = False
    out: list[str] = []
    pos = 0
    for m in _VAR_RE.finditer(value):
        out.append(value[pos : m.start()])
        pos = m.end()
        if m.group("escape") is not None:
            out.append("$")
            continue
        shown = "the value" if is_secret(key) else show_value(value)
        if m.group("open") is not None:
            fail(f"unclosed ${{ in {shown}; write ${{NAME}}, or $$ for a literal $")
        braced = m.group("braced")
        default: str | None = None
        if braced is not None:
            bm = _BRACED_RE.fullmatch(braced)
            if bm is None:
                fail(f"invalid variable reference ${{{braced}}} in {shown}; write ${{NAME}} or "
                     "${NAME:-default}, or $$ for a literal $")
            name, default = bm.group("name"), bm.group("default")
        else:
            name = m.group("named")
        got = env.get(name)
        if got is None or (default is not None and got == ""):
            if default is None:
                raise error(f"environment variable {name} is not set (used in {key}{where}); "
                            f"set it, or write ${{{name}:-default}} for a default")
            got = default
        out.append(got)
        substituted = True
    out.append(value[pos:])
    result = "".join(out)
    return Expanded(result) if substituted else result


@functools.cache
def _unique_key_loader() -> type[yaml.SafeLoader]:
    """yaml.SafeLoader that rejects a key given twice in one mapping (YAML would keep the last
    silently, e.g. a second `replica:` replacing the first). Built on first use: PyYAML is
    imported only when a file is read, not by every command that touches the config module
    (`litefs restore URL` starts without it)."""
    import yaml

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # construct_mapping reports this one
            if key in seen:
                line = key_node.start_mark.line + 1
                first = seen[key].line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {line} (first on line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return loader.construct_mapping(node, deep=True)

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                    construct_mapping)
    return UniqueKeyLoader


def read_yaml(path: Path) -> object:
    """The YAML document in `path`, or a one-line QuietError (CONFIG) saying what is wrong."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"config file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise error(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise error(f"cannot read config file {path}: {exc.strerror or exc}") from None
    import yaml

    try:
        # A yaml.SafeLoader subclass: as safe as yaml.safe_load, plus duplicate-key errors.
        return yaml.load(content, Loader=_unique_key_loader())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise error(f"invalid YAML in {path}{at}: {problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"invalid YAML in {path}: {' '.join(str(exc).split())}") from None
