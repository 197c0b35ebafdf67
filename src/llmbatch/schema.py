"""The shape a reply must have: a JSON Schema or a pydantic model, checked on every reply.

    schema = Schema.from_file("invoice.schema.json")           # SchemaError names the file
    schema = Schema.from_model(Invoice)                          # a pydantic model class
    CompletionRequest(prompt="Extract: ...", schema=schema)      # sent natively, checked here
    parsed = schema.validate(reply_text)                         # dict, or an Invoice; or
                                                                 # raises SchemaViolation

A `Schema` is a small immutable value that travels with each request (and pickles to Ray
workers: the compiled validator is rebuilt lazily where it is used, a model class travels by
reference). The clients render it the provider's native way (`mode="native"`: OpenAI's
`json_schema` response format, Anthropic's forced tool) or as JSON mode plus the schema in
the system prompt (`mode="prompt"`, for servers without schema support).

JSON Schemas are checked against Draft 2020-12 when loaded, so a broken schema stops the run
before anything is sent. OpenAI's strict mode accepts only schemas whose every object lists
all its properties as required and forbids others (`additionalProperties: false`); `strict`
is sent true only when the schema qualifies, and replies are validated here either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

__all__ = [
    "SCHEMA_MODES",
    "Schema",
    "SchemaError",
    "SchemaMode",
    "SchemaRefCycle",
    "SchemaViolation",
    "schema_of_response_format",
]

SchemaMode = Literal["native", "prompt"]
SCHEMA_MODES: tuple[SchemaMode, ...] = get_args(SchemaMode)
# Both OpenAI's schema name and Anthropic's tool name must match this.
_NAME = re.compile(r"[^a-zA-Z0-9_-]+")
_MAX_ERRORS_SHOWN = 3


class SchemaError(ValueError):
    """The schema itself is unusable (not JSON, not a valid JSON Schema, wrong root)."""


class SchemaRefCycle(SchemaError):
    """A `$ref` chain comes back to where it started without stepping into the reply (e.g.
    `a: {$ref: b}`, `b: {$ref: a}`): checking any reply there would never end.

    `refs` is the chain, the first and last equal (`("#/$defs/a", "#/$defs/b", "#/$defs/a")`);
    `at` is where it was entered (a JSON pointer, "" for the root)."""

    def __init__(self, where: str, refs: tuple[str, ...], at: str) -> None:
        self.refs, self.at = refs, at
        super().__init__(
            f"{where}: the $ref chain at {at or '(root)'} loops ({' -> '.join(refs)}) without "
            "stepping into the value, so no reply could ever be checked against it"
        )


class SchemaViolation(ValueError):
    """A reply does not fit the schema. `str()` is the validator's message, for the model."""


def _name_of(text: str) -> str:
    name = _NAME.sub("_", text).strip("_")[:64]
    return name or "response"


@dataclass(frozen=True, slots=True, eq=False)
class Schema:
    """A JSON Schema (and optionally the pydantic model it came from) plus how to send it.

    Build with `from_dict`, `from_file` or `from_model`; the constructor does no checking.
    """

    json_schema: Mapping[str, Any]
    name: str = "response"
    mode: SchemaMode = "native"
    model: Any = None  # a pydantic BaseModel subclass, or None
    description: str = ""
    # Computed on first use, never pickled: "validator" (compiled), "chars" (JSON length).
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls,
        schema: Mapping[str, Any],
        *,
        name: str = "response",
        mode: SchemaMode = "native",
        where: str = "the schema",
    ) -> Schema:
        """Check `schema` against Draft 2020-12; `where` names it in errors (a file, a line)."""
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError as JSError

        if mode not in SCHEMA_MODES:
            raise SchemaError(f"schema mode must be one of {', '.join(SCHEMA_MODES)}, got {mode!r}")
        if not isinstance(schema, Mapping):
            raise SchemaError(f"{where} must be a JSON object, got {type(schema).__name__}")
        try:
            Draft202012Validator.check_schema(schema)
        except JSError as exc:
            at = "/".join(str(p) for p in exc.path) or "(root)"
            raise SchemaError(
                f"{where} is not a valid JSON Schema (Draft 2020-12) at {at}: {exc.message}"
            ) from None
        _check_refs(schema, where)
        if mode == "native" and schema.get("type") != "object":
            raise SchemaError(
                f"{where}: a schema sent natively (OpenAI json_schema, Anthropic tool input) "
                'must have "type": "object" at its root; wrap the value in an object, or use '
                "schema mode 'prompt'"
            )
        title = schema.get("title")
        description = schema.get("description")
        return cls(
            dict(schema),
            name=_name_of(name if name != "response" or not isinstance(title, str) else title),
            mode=mode,
            description=description if isinstance(description, str) else "",
        )

    @classmethod
    def from_file(cls, path: str | Path, *, mode: SchemaMode = "native") -> Schema:
        """A JSON Schema file; the schema's name is its `title`, else the file's stem."""
        path = Path(path)
        where = f"schema file {path}"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SchemaError(f"{where} cannot be read: {exc.strerror or exc}") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"{where} is not valid JSON: {exc}") from None
        stem = path.name.split(".")[0]
        title = data.get("title") if isinstance(data, dict) else None
        return cls.from_dict(
            data, name=title if isinstance(title, str) else stem, mode=mode, where=where
        )

    @classmethod
    def from_model(cls, model: type[Any], *, mode: SchemaMode = "native") -> Schema:
        """A pydantic model class: its `model_json_schema()`, replies parsed into instances."""
        if not (isinstance(model, type) and hasattr(model, "model_json_schema")):
            raise SchemaError(f"response_model must be a pydantic model class, got {model!r}")
        schema = cls.from_dict(
            model.model_json_schema(), name=model.__name__, mode=mode, where=model.__name__
        )
        return cls(
            schema.json_schema,
            name=schema.name,
            mode=mode,
            model=model,
            description=schema.description or (model.__doc__ or "").strip()[:1024],
        )

    @classmethod
    def of(
        cls, value: Schema | type[Any] | Mapping[str, Any], *, mode: SchemaMode | None = None
    ) -> Schema:
        """A `Schema` from a schema, a pydantic model class or a JSON Schema dict; `mode`
        None keeps a `Schema`'s own mode (and is "native" for the others)."""
        if isinstance(value, Schema):
            return value if mode is None else value.with_mode(mode)
        if isinstance(value, type):
            return _model_schema(value, mode or "native")
        return cls.from_dict(value, mode=mode or "native")

    def with_mode(self, mode: SchemaMode) -> Schema:
        if mode == self.mode:
            return self
        return Schema(self.json_schema, self.name, mode, self.model, self.description)

    # -- what is sent ---------------------------------------------------------------------------

    @property
    def strict(self) -> bool:
        """True when OpenAI's strict mode accepts this schema (see the module docstring)."""
        return _strict_ok(self.json_schema)

    def text_length(self) -> int:
        """Characters the schema adds to a request (its JSON), for token estimates."""
        chars = self._memo.get("chars")
        if chars is None:
            chars = self._memo["chars"] = len(orjson.dumps(self.json_schema))
        return int(chars)

    def instruction(self) -> str:
        """The system-prompt text of prompt mode."""
        return (
            "Respond with a single JSON object that conforms to this JSON Schema, and nothing "
            "else:\n" + orjson.dumps(self.json_schema).decode()
        )

    # -- what comes back ------------------------------------------------------------------------

    def validate(self, text: str) -> Any:
        """The reply parsed (a dict, or a model instance); `SchemaViolation` says why not."""
        if self.model is not None:
            return self._validate_model(text)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SchemaViolation(f"the reply is not valid JSON ({exc})") from None
        try:
            errors = list(self._errors(value))
        except RecursionError:
            # jsonschema recurses once per level of the reply: a reply nested deeper than
            # Python's stack is refused like any other bad reply, never a crash of the run.
            raise SchemaViolation(
                "the reply is nested too deeply to be checked against the schema"
            ) from None
        if errors:
            shown = "; ".join(errors[:_MAX_ERRORS_SHOWN])
            more = len(errors) - _MAX_ERRORS_SHOWN
            raise SchemaViolation(
                f"the reply does not match the schema: {shown}"
                + (f" (and {more} more)" if more > 0 else "")
            )
        return value

    def dump(self, parsed: Any) -> Any:
        """`parsed` as plain JSON data (a model instance dumped), for the output file."""
        if self.model is not None and hasattr(parsed, "model_dump"):
            return parsed.model_dump(mode="json")
        return parsed

    def _errors(self, value: Any) -> Iterator[str]:
        validator = self._memo.get("validator")
        if validator is None:
            from jsonschema import Draft202012Validator

            validator = self._memo["validator"] = Draft202012Validator(self.json_schema)
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.path)):
            at = "/".join(str(p) for p in error.absolute_path)
            yield f"at {at or '(root)'}: {error.message}"

    def _validate_model(self, text: str) -> Any:
        from pydantic import ValidationError

        try:
            return self.model.model_validate_json(text)
        except ValidationError as exc:
            problems = [
                f"at {'/'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in exc.errors()
            ]
            shown = "; ".join(problems[:_MAX_ERRORS_SHOWN])
            more = len(problems) - _MAX_ERRORS_SHOWN
            raise SchemaViolation(
                f"the reply does not match the schema: {shown}"
                + (f" (and {more} more)" if more > 0 else "")
            ) from None

    # Pickled without the compiled validator (rebuilt on first use where it lands).
    def __getstate__(self) -> tuple[Any, ...]:
        return (dict(self.json_schema), self.name, self.mode, self.model, self.description)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(
            ("json_schema", "name", "mode", "model", "description"), state, strict=True
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_memo", {})


_LINE_SCHEMAS: dict[bytes, Schema] = {}


def schema_of_response_format(value: Mapping[str, Any], *, where: str) -> Schema:
    """The `Schema` of an OpenAI `{"type": "json_schema", "json_schema": {"name", "schema"}}`
    (chat's `response_format`), or of the flat `{"type": "json_schema", "name", "schema"}`
    (the Responses API's `text.format`).

    A million input lines usually share a few schemas: each distinct one is checked once.
    """
    key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    schema = _LINE_SCHEMAS.get(key)
    if schema is not None:
        return schema
    flat = "json_schema" not in value
    spec = value if flat else value.get("json_schema")
    at = f"{where}.schema" if flat else f"{where}.json_schema.schema"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
        raise SchemaError(f"{at} must be a JSON Schema object")
    name = spec.get("name")
    schema = Schema.from_dict(
        spec["schema"], name=name if isinstance(name, str) else "response", where=at
    )
    if len(_LINE_SCHEMAS) >= 256:
        _LINE_SCHEMAS.clear()
    _LINE_SCHEMAS[key] = schema
    return schema


_MODEL_SCHEMAS: dict[tuple[type[Any], SchemaMode], Schema] = {}


def _model_schema(model: type[Any], mode: SchemaMode) -> Schema:
    # One Schema per model class: a million requests built with schema=Model share it.
    key = (model, mode)
    schema = _MODEL_SCHEMAS.get(key)
    if schema is None:
        if len(_MODEL_SCHEMAS) >= 256:  # bounded: classes made on the fly do not pile up
            _MODEL_SCHEMAS.clear()
        schema = _MODEL_SCHEMAS[key] = Schema.from_model(model, mode=mode)
    return schema


_DATA_KEYWORDS = frozenset(("enum", "const", "default", "examples"))


def _check_refs(schema: Mapping[str, Any], where: str) -> None:
    """Every `$ref` resolves inside the schema itself: nothing is ever downloaded, so a remote
    or dangling reference would fail every reply after it was paid for; refuse it up front."""
    from urllib.parse import urljoin

    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    given = schema.get("$id")
    root = given if isinstance(given, str) else ""
    registry = Registry().with_resource(root, DRAFT202012.create_resource(schema)).crawl()

    def walk(node: Any, base: str, at: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, base, f"{at}/{i}")
            return
        if not isinstance(node, Mapping):
            return
        if isinstance(node.get("$id"), str):
            base = urljoin(base, node["$id"])
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                registry.resolver(base_uri=base).lookup(ref)
            except Unresolvable:
                raise SchemaError(
                    f"{where}: $ref {ref!r} at {at or '(root)'} does not resolve within the "
                    "schema (references are never downloaded; put the definition in $defs)"
                ) from None
        cycle = _ref_cycle(node, registry.resolver(base_uri=base), "#" + at, acyclic)
        if cycle:
            raise SchemaRefCycle(where, cycle, at)
        for key, value in node.items():
            if key not in _DATA_KEYWORDS:
                walk(value, base, f"{at}/{key}")

    acyclic: set[int] = set()
    walk(schema, root, "")


# Keywords that apply a subschema to the very value being checked, not to a part of it.
_SAME_VALUE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else")


def _same_value_refs(node: Mapping[str, Any], resolver: Any) -> Iterator[tuple[str, Any, Any]]:
    """(ref, target, target's resolver) of each `$ref` that `node` applies to its own value."""
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    ref = node.get("$ref")
    if isinstance(ref, str):
        try:
            target = resolver.lookup(ref)
        except Unresolvable:
            pass  # named by the walk when it gets there
        else:
            yield ref, target.contents, target.resolver
    subs: list[Any] = []
    for key in _SAME_VALUE:
        value = node.get(key)
        subs.extend(value if isinstance(value, list) else [value])
    dependent = node.get("dependentSchemas")
    if isinstance(dependent, Mapping):
        subs.extend(dependent.values())
    for sub in subs:
        if isinstance(sub, Mapping):
            inner = resolver.in_subresource(DRAFT202012.create_resource(sub))
            yield from _same_value_refs(sub, inner)


def _ref_cycle(
    start: Mapping[str, Any], resolver: Any, label: str, acyclic: set[int]
) -> tuple[str, ...] | None:
    """The chain of `$ref`s leading from `start` back to a node already on the chain, if any.

    Recursion through `properties`, `items` and the like is fine (a tree of any depth: each
    step enters a smaller part of the reply); only a loop on the same value never ends.
    `acyclic` holds the nodes (by identity) already proven to lead to no loop."""
    labels: list[str] = []
    on_chain: dict[int, int] = {}

    def visit(node: Mapping[str, Any], resolver: Any, label: str) -> tuple[str, ...] | None:
        if id(node) in acyclic:
            return None
        on_chain[id(node)] = len(labels)
        labels.append(label)
        for ref, target, target_resolver in _same_value_refs(node, resolver):
            if not isinstance(target, Mapping):
                continue
            if id(target) in on_chain:
                return (*labels[on_chain[id(target)] :], ref)
            found = visit(target, target_resolver, ref)
            if found:
                return found
        labels.pop()
        del on_chain[id(node)]
        acyclic.add(id(node))
        return None

    return visit(start, resolver, label)


def _strict_ok(node: Any) -> bool:
    """Every object node lists all its properties as required and forbids others."""
    if isinstance(node, list):
        return all(_strict_ok(n) for n in node)
    if not isinstance(node, Mapping):
        return True
    if node.get("type") == "object" or "properties" in node:
        props = node.get("properties") or {}
        if node.get("additionalProperties") is not False:
            return False
        if set(node.get("required") or ()) != set(props):
            return False
    return all(_strict_ok(v) for k, v in node.items() if k not in ("enum", "const", "default"))
