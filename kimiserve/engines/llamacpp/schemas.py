"""A client's JSON schema rewritten into one llguidance can enforce in full, or refused.

llguidance is run strict (`lenient: false`): a keyword it does not implement (`not`,
`uniqueItems`, `propertyNames`, `if`, a look-around `pattern`, ...) is a 400 naming it
(`refusal()`), never silently ignored. Before compiling, `enforceable()` rewrites what can be
rewritten without admitting an output the original schema rejects:

- `format`, the JSON Schema format vocabulary: llguidance 1.9.1 enforces `date`, `date-time`,
  `time`, `duration`, `email`, `hostname`, `ipv4`, `ipv6`, `uuid` and `uri` itself (less
  February 29 and leap seconds, `NARROWED`, which its regexes admit in any year; a `uri`
  scheme is held to 16 characters). The others
  become a `pattern` of a subset of the format (`FORMAT_PATTERNS`: a relative path or a URI for
  `uri-reference`, literal text for `regex`, ...) or its ASCII form (`iri` as `uri`,
  `idn-email` as `email`). A name outside the vocabulary (`int32`, `url`, ...) is an
  annotation, as the specification defines it, and is dropped.
- `dependencies` / `dependentRequired` (`a` needs `b`): `b` joins `required` when `a` is
  required or `b` is declared; otherwise `a` is never written (`properties.a: false`).
  `dependencies` / `dependentSchemas` with a schema: `a` is never written unless required, in
  which case the schema joins an `allOf`.
- `oneOf` whose branches only name required keys: each branch also leaves unwritten the keys
  only the others require, so exactly one matches (llguidance enforces `oneOf` as `anyOf`).
- `not`: `{}` (nothing validates) becomes `false`; `{"type": ...}` the other types;
  `{"required": [a, ...]}` leaves `a` unwritten. Other forms are refused.
- Objects that declare their properties admit no others (`closed`): a small model otherwise
  invents keys until max_tokens.
- `minProperties` above the required count: the first optional properties become required.
  `maxProperties` no smaller than the declared properties of a closed object is dropped.
"""

from __future__ import annotations

import re
from typing import Any

from kimiserve.errors import GrammarError

NATIVE_FORMATS = frozenset(
    {"date", "date-time", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"}
)
RENAMED_FORMATS = {"iri": "uri", "idn-email": "email", "idn-hostname": "hostname"}
_SEGMENT = r"[A-Za-z0-9._~-]+"
_URI_REFERENCE = (
    rf"^(?:https?://[a-z0-9-]+(?:\.[a-z0-9-]+)*)?(?:/{_SEGMENT})*/?"
    rf"(?:\?[A-Za-z0-9._~=&-]*)?(?:#[A-Za-z0-9._~-]*)?$"
)
FORMAT_PATTERNS = {
    "uri-reference": _URI_REFERENCE,
    "iri-reference": _URI_REFERENCE,
    "json-pointer": r"^(?:/(?:[A-Za-z0-9._-]|~[01])*)*$",
    # no 0 after the first digit, and a pointer or `#` after it: what jsonschema's check accepts
    "relative-json-pointer": r"^(?:0|[1-9]{1,9})(?:#|(?:/(?:[A-Za-z0-9._-]|~[01])*)+)$",
    "regex": r"^[A-Za-z0-9 _,:-]*$",
    "uri-template": r"^(?:[A-Za-z0-9._~:/?#@!$&*+,;=-]|\{[A-Za-z_][A-Za-z0-9_]{0,30}\})*$",
}
# llguidance's own regexes admit February 29 of any year and a leap second (:60), which Python's
# date parser and RFC 3339 checkers refuse: both are left out (a pattern beside the format). A
# `uri`'s scheme is held to 16 characters.
_DAY = r"[0-9]{4}-(?:(?:0[13-9]|1[0-2])-[0-9]{2}|02-(?:[01][0-9]|2[0-8]))"
NARROWED = {
    "date": rf"^{_DAY}$",
    "date-time": rf"^{_DAY}[Tt][0-9]{{2}}:[0-9]{{2}}:[0-5][0-9]",
    "time": r"^[0-9]{2}:[0-9]{2}:[0-5][0-9]",
    "uri": r"^[A-Za-z][A-Za-z0-9+.-]{0,15}:",  # a scheme a small model cannot write on and on
}
VALUES = frozenset({"const", "enum", "default", "examples", "example"})  # values, not schemas
MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def closed(schema: Any) -> Any:
    """`close_objects(schema)` unless the schema merges branches (`OPEN_KEYWORDS`)."""
    return schema if _mentions(schema, OPEN_KEYWORDS) else close_objects(schema)


def enforceable(node: Any) -> Any:
    """A copy of a schema that llguidance enforces strictly; every output of the copy validates
    against `node` (see the module doc). GrammarError for what cannot be rewritten."""
    if isinstance(node, list):
        return [enforceable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _child(key, value) for key, value in node.items()}
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt in NARROWED:
        _add_pattern(out, NARROWED[fmt])
    elif isinstance(fmt, str) and fmt not in NATIVE_FORMATS:
        del out["format"]
        if fmt in RENAMED_FORMATS:
            out["format"] = RENAMED_FORMATS[fmt]
        elif fmt in FORMAT_PATTERNS:
            _add_pattern(out, FORMAT_PATTERNS[fmt])
    if "not" in out and _negation(out) is False:
        return False
    if "oneOf" in out and _exactly_one(out) is False:
        return False
    _dependencies(out)
    _property_counts(out)
    return out


TYPES = ("string", "number", "integer", "boolean", "null", "array", "object")


def _negation(out: dict[str, Any]) -> Any:
    """Rewrite `out`'s `not` in place where it is one of the common forms (False: the schema
    admits nothing); a `not` left in `out` is refused by llguidance."""
    negated = out["not"]
    if negated == {} or negated is True:
        return False  # `{"not": {}}`: nothing validates
    if negated is False:
        del out["not"]
        return out
    if not isinstance(negated, dict):
        return None
    if set(negated) == {"type"}:
        banned = negated["type"] if isinstance(negated["type"], list) else [negated["type"]]
        if "number" in banned:
            banned = [*banned, "integer"]
        own = out.get("type", list(TYPES))
        kept = [t for t in (own if isinstance(own, list) else [own]) if t not in banned]
        if "integer" in banned and "number" in kept:
            return None  # a number that is not an integer: no type says it
        if not kept:
            return False
        del out["not"]
        out["type"] = kept if len(kept) > 1 else kept[0]
        return out
    required = out.get("required", [])
    if set(negated) == {"required"} and isinstance(negated["required"], list) and negated["required"]:
        first = negated["required"][0]
        if first not in required:  # `first` never written: the object never has them all
            del out["not"]
            out["properties"] = {**out.get("properties", {}), first: False}
            return out
    return None


def _exactly_one(out: dict[str, Any]) -> Any:
    """Rewrite `out`'s `oneOf` in place where its branches only name required keys (`{"required":
    [...]}`, the common "one of these sets of fields"): each branch becomes one that also leaves
    unwritten the keys only other branches require, and a branch whose keys include all of
    another's is dropped (both would match). Exactly one branch then matches each output, which
    `anyOf` (llguidance's `oneOf`) does not ensure. False: no branch is left."""
    branches = out["oneOf"]
    if "anyOf" in out or not isinstance(branches, list) or not branches:
        return None
    sets: list[frozenset[str]] = []
    for branch in branches:
        names = branch.get("required") if isinstance(branch, dict) and set(branch) == {"required"} else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            return None
        sets.append(frozenset(names))
    named = frozenset().union(*sets)
    kept = [
        {"required": sorted(mine), "properties": {name: False for name in sorted(named - mine)}}
        for i, mine in enumerate(sets)
        if not any(other <= mine for j, other in enumerate(sets) if j != i)
    ]
    if not kept:
        return False
    del out["oneOf"]
    out["anyOf"] = kept
    return out


def _child(key: str, value: Any) -> Any:
    if key in VALUES:
        return value
    if key in MAPS and isinstance(value, dict):  # names to schemas: a name is not a keyword
        return {name: enforceable(schema) for name, schema in value.items()}
    if key == "dependencies" and isinstance(value, dict):
        return {name: need if isinstance(need, list) else enforceable(need) for name, need in value.items()}
    return enforceable(value)


def _add_pattern(out: dict[str, Any], pattern: str) -> None:
    if "pattern" in out:
        out["allOf"] = [*out.get("allOf", []), {"pattern": pattern}]
    else:
        out["pattern"] = pattern


def _dependencies(out: dict[str, Any]) -> None:
    entries: dict[str, Any] = {}
    for key in ("dependencies", "dependentRequired", "dependentSchemas"):
        value = out.pop(key, None)
        if isinstance(value, dict):
            entries.update(value)
        elif value is not None:
            raise GrammarError(f"`{key}` must be an object.", parameter="constraint")
    if not entries:
        return
    properties = dict(out.get("properties", {}))
    required = list(out.get("required", []))
    merged: list[Any] = []
    for name, need in entries.items():
        if isinstance(need, list):
            if name in required or all(properties.get(n, False) is not False for n in need):
                required += [n for n in need if n not in required]
            else:
                properties[name] = False
        elif name in required:
            merged.append(need)
        else:
            properties[name] = False
    out["properties"] = properties
    if required:
        out["required"] = required
    if merged:
        out["allOf"] = [*out.get("allOf", []), *merged]


def _property_counts(out: dict[str, Any]) -> None:
    properties = out.get("properties")
    if not isinstance(properties, dict):
        return
    required = list(out.get("required", []))
    least = out.get("minProperties")
    if isinstance(least, int) and least > len(required):
        optional = [
            name for name, schema in properties.items() if name not in required and schema is not False
        ]
        if len(optional) >= least - len(required):
            out["required"] = required + optional[: least - len(required)]
            del out["minProperties"]
    elif isinstance(least, int):
        del out["minProperties"]
    most = out.get("maxProperties")
    if isinstance(most, int) and out.get("additionalProperties") is False and most >= len(properties):
        del out["maxProperties"]


_KEYS = re.compile(r"Unimplemented keys: \[([^\]]*)\]")


def refusal(message: str) -> str | None:
    """A client-facing sentence for an llguidance error that means "cannot be enforced"."""
    keys = _KEYS.search(message)
    if keys:
        names = ", ".join(f"`{k.strip().strip(chr(34))}`" for k in keys.group(1).split(","))
        return f"The JSON schema uses {names}, which this server cannot enforce; remove it."
    if "Unsatisfiable schema" in message:
        reason = " ".join(message[message.index("Unsatisfiable schema") :].split())[:200]
        return f"The JSON schema admits no value ({reason}); fix the schema."
    if "lookaround" in message or "look-around" in message:
        return "A `pattern` of the JSON schema uses look-around, which this server cannot enforce."
    if "min/maxProperties" in message:
        return (
            "`minProperties`/`maxProperties` can only be enforced here when the object's "
            "properties are all required (or, for maxProperties, the object is closed)."
        )
    return None


# Keywords under which an object's undeclared keys may be needed (merged branches, conditions).
OPEN_KEYWORDS = frozenset({"allOf", "if", "unevaluatedProperties", "dependentSchemas", "dependencies"})


def _mentions(node: Any, keywords: frozenset[str]) -> bool:
    if isinstance(node, list):
        return any(_mentions(item, keywords) for item in node)
    if not isinstance(node, dict):
        return False
    return any(
        key in keywords or (key not in VALUES and _mentions(value, keywords)) for key, value in node.items()
    )


def close_objects(node: Any) -> Any:
    """A copy where an object schema that declares `properties` (and says nothing about other
    keys) admits no undeclared keys. Output under it still validates against the original; a
    small model otherwise invents keys until max_tokens. Not applied to schemas that use
    `allOf`, `if`, ... (`OPEN_KEYWORDS`), where a branch's undeclared keys may be another's."""
    if isinstance(node, list):
        return [close_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: value if key in VALUES else close_objects(value) for key, value in node.items()}
    properties = node.get("properties")
    required = node.get("required", [])
    if (
        isinstance(properties, dict)
        and "additionalProperties" not in node
        and "patternProperties" not in node
        and "minProperties" not in node
        and isinstance(required, list)
        and all(key in properties for key in required)
    ):
        out["additionalProperties"] = False
    return out
