"""Grammar-constrained generation: GBNF grammars (llama.cpp's format), JSON mode, JSON schemas.

``Grammar.from_string(gbnf)`` parses a grammar (the C++ core does the matching, see
cpp/sample/grammar.h); ``Grammar.json()`` is any JSON object; ``Grammar.from_json_schema(schema)``
accepts the JSON documents a schema describes (object properties in the order given, required
and optional ones; arrays with minItems / maxItems; strings with enum, const, minLength /
maxLength; integers, numbers, booleans, null; anyOf / oneOf; type lists; local ``$ref`` into
``$defs`` / ``definitions``). Keywords it cannot express (pattern, format, numeric bounds,
additionalProperties with a schema) raise ValueError rather than being ignored.

Generation takes the model's pick when the grammar allows it and otherwise picks again among the
allowed tokens only (llama.cpp's common sampler does the same); the end of generation is allowed
once the text is a complete sentence of the grammar, and forced when nothing else can follow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from splitllm import _core

__all__ = ["JSON_GBNF", "Grammar", "GrammarDeadEnd", "as_grammar", "gbnf_literal", "json_schema_rules",
           "json_schema_to_gbnf", "response_grammar", "sample_with_grammar"]

# Any JSON value; whitespace only between tokens and kept short (a run of spaces cannot go on
# forever), none after the end, so generation stops there. The root is an object, as OpenAI's
# JSON mode asks for.
JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ws ("," ws string ws ":" ws value ws)* )? "}"
array  ::= "[" ws ( value ws ("," ws value ws)* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\""
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?
ws     ::= | " " | "\n" [ \t]{0,20}
"""


class Grammar:
    """A parsed grammar; ``text`` is its GBNF source. Raises ``splitllm.Error`` (naming the line and
    column) for a grammar that does not parse, has an undefined rule or is left-recursive."""

    def __init__(self, text: str, root: str = "root") -> None:
        if not isinstance(text, str):
            raise ValueError(f"a grammar is GBNF text (got {type(text).__name__})")
        self.text = text
        self.root = root
        self._rules = _core.GrammarRules(text, root)

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = False, root: str = "root") -> Grammar:
        """llama-cpp-python's ``LlamaGrammar.from_string``."""
        return cls(grammar, root)

    @classmethod
    def from_file(cls, path: str | Path, verbose: bool = False) -> Grammar:
        return cls(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def json(cls) -> Grammar:
        """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        return cls(JSON_GBNF)

    @classmethod
    def from_json_schema(cls, schema: str | Mapping[str, Any], verbose: bool = False) -> Grammar:
        """The JSON documents a schema (a dict or its JSON text) describes."""
        return cls(json_schema_to_gbnf(schema))

    def state(self) -> Any:
        """A fresh matching state (``_core.Grammar``) for one generation."""
        return _core.Grammar(self._rules)

    def __repr__(self) -> str:
        return f"Grammar({self._rules.n_rules} rules)"


class GrammarDeadEnd(ValueError):
    """No token of the vocabulary can continue the text under the grammar."""


def sample_with_grammar(sampler: Any, logits: np.ndarray, state: Any, vocab: Any) -> int:
    """The sampler's pick if the grammar allows it, else a pick among the allowed tokens; the
    grammar state takes the token."""
    token = sampler.sample(logits)
    if not state.allows(vocab, token):
        mask = state.allowed(vocab)
        if not mask.any():
            raise GrammarDeadEnd("the grammar allows no token here (not even the end of generation)")
        token = sampler.sample(np.where(mask, logits, np.float32(-np.inf)).astype(np.float32, copy=False))
    state.accept(vocab, token)
    return token


# ---- JSON schema ----

# Values carry no whitespace of their own: containers put it between tokens (so that nothing may
# follow the root value and generation stops there).
_PRIMITIVES = {
    "boolean": '("true" | "false")',
    "null": '"null"',
    "integer": '("-"? ([0-9] | [1-9] [0-9]{0,15}))',
    "number": '("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "string": '"\\"" char* "\\""',
}
_SUPPORT = r"""
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
ws ::= | " " | "\n" [ \t]{0,20}
value ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ws ("," ws string ws ":" ws value ws)* )? "}"
array ::= "[" ws ( value ws ("," ws value ws)* )? "]"
string ::= "\"" char* "\""
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?
"""
MAX_SCHEMA_PROPERTIES = 1000  # per object: beyond, a request's schema is refused
_RESERVED = {"root", "char", "ws", "value", "object", "array", "string", "number"}  # rules written here
_UNSUPPORTED = ("pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                "multipleOf", "patternProperties", "allOf", "not", "if", "then", "else", "uniqueItems",
                "minProperties", "maxProperties", "contains", "prefixItems")


def gbnf_literal(text: str) -> str:
    """A GBNF literal matching ``text`` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _literal(value: Any) -> str:
    """A GBNF literal matching the JSON text of value (compact)."""
    return gbnf_literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


class _SchemaConverter:
    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.root = schema
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    def rule(self, hint: str, body: str | None) -> str:
        """A rule with this body (an existing one if the same); body None: a fresh name, reserved."""
        base = "".join(c if c.isascii() and c.isalnum() else "-" for c in hint).strip("-").lower() or "r"
        name, i = base, 1
        while name in _RESERVED or (name in self.rules and (body is None or self.rules[name] != body)):
            i += 1
            name = f"{base}-{i}"
        self.rules[name] = body if body is not None else ""
        return name

    def resolve(self, ref: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise ValueError(f"JSON schema: only local $ref ('#/...') is supported (got {ref!r})")
        target: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else ():
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise ValueError(f"JSON schema: $ref {ref!r} points nowhere")
            target = target[part]
        name = self.rule("ref-" + ref.rsplit("/", 1)[-1], None)  # reserved first: refs may recurse
        self.refs[ref] = name
        self.rules[name] = self.visit(target, name)
        return name

    def visit(self, s: Any, hint: str) -> str:
        """A GBNF expression for the values of schema s."""
        if s is True or s == {}:
            return "value"
        if not isinstance(s, Mapping):
            raise ValueError(f"JSON schema: expected an object at {hint!r}")
        bad = [k for k in _UNSUPPORTED if k in s]
        if bad:
            raise ValueError(f"JSON schema: {', '.join(bad)} at {hint!r} cannot be enforced by a grammar "
                             "here")
        if "$ref" in s:
            return self.resolve(s["$ref"])
        if "const" in s:
            return _literal(s["const"])
        if "enum" in s:
            return "(" + " | ".join(_literal(v) for v in s["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in s:
                alts = [self.rule(f"{hint}-{i}", self.visit(a, f"{hint}-{i}")) for i, a in enumerate(s[key])]
                return "(" + " | ".join(alts) + ")"
        t = s.get("type")
        if isinstance(t, list):
            alts = [self.rule(f"{hint}-{x}", self.visit({**s, "type": x}, f"{hint}-{x}")) for x in t]
            return "(" + " | ".join(alts) + ")"
        if t is None:
            t = "object" if "properties" in s else "array" if "items" in s else None
        if t is None:
            return "value"
        if t == "object":
            return self.object(s, hint)
        if t == "array":
            return self.array(s, hint)
        if t == "string" and ("minLength" in s or "maxLength" in s):
            lo, hi = _count(s, "minLength", 0), _count(s, "maxLength", None)
            return f'"\\"" char{{{lo},{"" if hi is None else hi}}} "\\""'
        if t not in _PRIMITIVES:
            raise ValueError(f"JSON schema: unknown type {t!r} at {hint!r}")
        return _PRIMITIVES[t]

    def object(self, s: Mapping[str, Any], hint: str) -> str:
        props = s.get("properties") or {}
        if not isinstance(props, Mapping):
            raise ValueError(f"JSON schema: properties at {hint!r} must be an object")
        extra = s.get("additionalProperties", False if props else True)
        if extra not in (True, False):
            raise ValueError(f"JSON schema: additionalProperties with a schema at {hint!r} is not supported")
        missing = [k for k in s.get("required", ()) if k not in props]
        if missing:
            raise ValueError(f"JSON schema: required {missing} at {hint!r} are not among its properties")
        if not props:
            return "object" if extra else '"{" ws "}"'
        if extra is True and "additionalProperties" in s:
            raise ValueError(f"JSON schema: additionalProperties true beside properties at {hint!r} is not "
                             "supported")
        if len(props) > MAX_SCHEMA_PROPERTIES:
            raise ValueError(f"JSON schema: more than {MAX_SCHEMA_PROPERTIES} properties at {hint!r}")
        required = set(s.get("required", ()))
        items = []
        for k, v in props.items():
            value = self.rule(f"{hint}-{k}-value", self.visit(v, f"{hint}-{k}"))
            items.append((self.rule(f"{hint}-{k}", f'{_literal(k)} ws ":" ws {value}'), k in required))
        # Properties in the order given; optional ones may be left out. Rule tail-i: what may follow
        # once some property before i has been written; head-i: the first property written is i or
        # later. Each refers to the next by name, so the grammar grows linearly with the properties.
        n = len(items)
        tail: list[str] = [""] * (n + 1)
        for i in range(n - 1, -1, -1):
            r, req = items[i]
            body = f'"," ws {r} ws {tail[i + 1]}' if req else f'("," ws {r} ws)? {tail[i + 1]}'
            tail[i] = self.rule(f"{hint}-tail-{i}", body.strip())
        head = ""
        for i in range(n - 1, -1, -1):
            r, req = items[i]
            first = f"{r} ws {tail[i + 1]}".strip()
            head = self.rule(f"{hint}-head-{i}", first if req else f"{first} | {head or '()'}")
        return f'"{{" ws {head} "}}"'.replace("  ", " ")

    def array(self, s: Mapping[str, Any], hint: str) -> str:
        item = self.rule(f"{hint}-item", self.visit(s.get("items", {}), f"{hint}-item"))
        lo, hi = _count(s, "minItems", 0), _count(s, "maxItems", None)
        assert lo is not None
        if hi is not None and hi < lo:
            raise ValueError(f"JSON schema: maxItems below minItems at {hint!r}")
        if hi == 0:
            return '"[" ws "]"'
        more = f'("," ws {item} ws){{{max(lo - 1, 0)},{"" if hi is None else hi - 1}}}'
        seq = f"{item} ws {more}"
        return f'"[" ws {seq} "]"' if lo > 0 else f'"[" ws ({seq})? "]"'


def _no_constant(name: str) -> Any:
    raise ValueError(f"JSON schema: {name} is not JSON")


def _count(s: Mapping[str, Any], key: str, default: int | None) -> int | None:
    """A non-negative integer keyword (minItems, maxLength, ...)."""
    v = s.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100000:
        raise ValueError(f"JSON schema: {key} must be an integer in [0, 100000] (got {v!r})")
    return v


def _schema_expression(schema: str | Mapping[str, Any], hint: str, rules: dict[str, str]) -> str:
    """A GBNF expression for the documents of a schema; the rules it needs are added to ``rules``."""
    try:
        if isinstance(schema, str):
            schema = json.loads(schema, parse_constant=_no_constant)
        if not isinstance(schema, Mapping):
            raise ValueError("JSON schema: a schema must be an object")
        conv = _SchemaConverter(schema)
        conv.rules = rules  # shared: names already taken by other schemas are not reused
        return conv.visit(schema, hint)
    except (TypeError, AttributeError, KeyError, RecursionError, OverflowError) as e:  # a malformed schema
        raise ValueError(f"JSON schema: malformed ({type(e).__name__}: {e})") from None


def json_schema_to_gbnf(schema: str | Mapping[str, Any]) -> str:
    """GBNF for the JSON documents of a schema (see the module's docstring for what is supported)."""
    rules: dict[str, str] = {}
    root = _schema_expression(schema, "root", rules)
    lines = [f"root ::= {root}"] + [f"{name} ::= {body}" for name, body in rules.items()]
    return "\n".join(lines) + "\n" + _SUPPORT


def json_schema_rules(schemas: Mapping[str, str | Mapping[str, Any]]) -> tuple[dict[str, str], str]:
    """Several schemas in one grammar: for each key (a rule-name prefix, letters, digits and dashes,
    not ``root``), a GBNF expression for its documents; and the GBNF lines of the rules they use
    (support rules included, no ``root``). Rule names start with a key or with ``ref-``."""
    rules: dict[str, str] = {}
    exprs = {key: _schema_expression(s, key, rules) for key, s in schemas.items()}
    return exprs, "\n".join(f"{name} ::= {body}" for name, body in rules.items()) + "\n" + _SUPPORT


def as_grammar(grammar: Grammar | str | None) -> Grammar | None:
    """A Grammar from a Grammar, GBNF text or None."""
    if grammar is None or isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar(grammar)
    # llama-cpp-python's LlamaGrammar keeps its GBNF source in _grammar
    text = getattr(grammar, "_grammar", None)
    if isinstance(text, str):
        return Grammar(text, getattr(grammar, "_root", "root"))
    raise ValueError(f"grammar must be a splitllm.grammar.Grammar or GBNF text (got "
                     f"{type(grammar).__name__})")


def response_grammar(response_format: Mapping[str, Any] | None,
                     grammar: Grammar | str | None = None) -> Grammar | None:
    """The grammar a chat request's ``response_format`` (and ``grammar``) asks for."""
    if response_format is None:
        return as_grammar(grammar)
    if not isinstance(response_format, Mapping) or "type" not in response_format:
        raise ValueError("response_format must be an object with a 'type'")
    kind = response_format["type"]
    if grammar is not None and kind != "text":
        raise ValueError("give either grammar or a JSON response_format, not both")
    if kind == "text":
        return as_grammar(grammar)
    if kind == "json_object":
        schema = response_format.get("schema")
        return Grammar.json() if schema is None else Grammar.from_json_schema(schema)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise ValueError("response_format json_schema needs json_schema.schema")
        return Grammar.from_json_schema(spec["schema"])
    raise ValueError(f"response_format type must be text, json_object or json_schema (got {kind!r})")
