"""Fifty tool schemas with the JSON Schema keywords real tool definitions use (forced-call tests)."""

from __future__ import annotations

from typing import Any

S = dict[str, Any]


def obj(props: S, required: list[str] | None = None, **extra: Any) -> S:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        **extra,
    }


SHORT: S = {"type": "string", "maxLength": 24}

SCHEMAS: dict[str, S] = {
    # numbers with bounds
    "int_range": obj({"n": {"type": "integer", "minimum": 1, "maximum": 10}}),
    "int_exclusive": obj({"n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 5}}),
    "number_range": obj({"x": {"type": "number", "minimum": -1.5, "maximum": 2.5}}),
    "number_negative": obj({"t": {"type": "number", "maximum": -10}}),
    "int_unbounded": obj({"count": {"type": "integer"}}),
    "int_big_bounds": obj({"id": {"type": "integer", "minimum": 1000, "maximum": 999999}}),
    "multiple_numbers": obj(
        {
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "lon": {"type": "number", "minimum": -180, "maximum": 180},
        }
    ),
    # strings: length, pattern, format, enum, const
    "string_length": obj({"code": {"type": "string", "minLength": 3, "maxLength": 6}}),
    "string_pattern_digits": obj({"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}),
    "string_pattern_word": obj(
        {"slug": {"type": "string", "pattern": "^[a-z]+(-[a-z]+){0,2}$", "maxLength": 30}}
    ),
    "string_pattern_sku": obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}}),
    "format_date": obj({"day": {"type": "string", "format": "date"}}),
    "format_date_time": obj({"at": {"type": "string", "format": "date-time"}}),
    "format_email": obj({"to": {"type": "string", "format": "email", "maxLength": 40}}),
    "format_uuid": obj({"id": {"type": "string", "format": "uuid"}}),
    "format_ipv4": obj({"host": {"type": "string", "format": "ipv4"}}),
    "enum_strings": obj({"unit": {"enum": ["celsius", "fahrenheit", "kelvin"]}}),
    "enum_mixed": obj({"level": {"enum": [1, 2, "max", None]}}),
    "const_value": obj({"version": {"const": "v2"}, "city": SHORT}),
    "typed_enum": obj({"size": {"type": "string", "enum": ["S", "M", "L", "XL"]}}),
    # anyOf / oneOf
    "anyof_types": obj({"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, SHORT]}}),
    "oneof_objects": obj(
        {
            "shape": {
                "oneOf": [
                    obj({"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0, "maximum": 10}}),
                    obj(
                        {
                            "kind": {"const": "rect"},
                            "w": {"type": "integer", "minimum": 1, "maximum": 9},
                            "h": {"type": "integer", "minimum": 1, "maximum": 9},
                        }
                    ),
                ]
            }
        }
    ),
    "nullable": obj({"note": {"type": ["string", "null"], "maxLength": 20}}),
    "anyof_null_int": obj(
        {"limit": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 50}, {"type": "null"}]}}
    ),
    # $ref / $defs
    "ref_defs": {
        "type": "object",
        "properties": {"from": {"$ref": "#/$defs/place"}, "to": {"$ref": "#/$defs/place"}},
        "required": ["from", "to"],
        "$defs": {"place": obj({"city": SHORT, "country": {"type": "string", "pattern": "^[A-Z]{2}$"}})},
    },
    "ref_definitions": {
        "type": "object",
        "properties": {"item": {"$ref": "#/definitions/item"}},
        "required": ["item"],
        "definitions": {"item": obj({"name": SHORT, "qty": {"type": "integer", "minimum": 1, "maximum": 9}})},
    },
    "ref_recursive": {
        "type": "object",
        "properties": {"tree": {"$ref": "#/$defs/node"}},
        "required": ["tree"],
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "maxLength": 8},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
                "required": ["label"],
                "additionalProperties": False,
            }
        },
    },
    # additionalProperties
    "no_additional": obj({"city": SHORT}, additionalProperties=False),
    "additional_typed": {
        "type": "object",
        "properties": {"name": SHORT},
        "required": ["name"],
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9},
        "maxProperties": 3,
    },
    "optional_keys": obj(
        {"city": SHORT, "days": {"type": "integer", "minimum": 1, "maximum": 7}}, required=["city"]
    ),
    "no_properties": {"type": "object", "properties": {}, "additionalProperties": False},
    "empty_schema": {},
    # arrays with bounds
    "array_bounds": obj({"tags": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3}}),
    "array_unique_ints": obj(
        {
            "ids": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "minItems": 2,
                "maxItems": 4,
            }
        }
    ),
    "array_of_objects": obj(
        {
            "rows": {
                "type": "array",
                "items": obj(
                    {
                        "k": {"type": "string", "maxLength": 6},
                        "v": {"type": "integer", "minimum": 0, "maximum": 9},
                    }
                ),
                "maxItems": 2,
            }
        }
    ),
    "array_exact": obj(
        {
            "rgb": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 255},
                "minItems": 3,
                "maxItems": 3,
            }
        }
    ),
    "tuple_prefix_items": obj(
        {
            "pair": {
                "type": "array",
                "prefixItems": [SHORT, {"type": "integer", "minimum": 0, "maximum": 9}],
                "items": False,
                "minItems": 2,
            }
        }
    ),
    # booleans, nesting, combinations
    "boolean": obj({"confirm": {"type": "boolean"}}),
    "nested_object": obj(
        {"user": obj({"name": SHORT, "age": {"type": "integer", "minimum": 0, "maximum": 120}})}
    ),
    "deep_nesting": obj({"a": obj({"b": obj({"c": obj({"d": {"type": "boolean"}})})})}),
    "weather": obj(
        {
            "city": SHORT,
            "unit": {"enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        required=["city"],
    ),
    "search": obj(
        {
            "query": {"type": "string", "minLength": 1, "maxLength": 40},
            "limit": {"type": "integer", "minimum": 1, "maximum": 20},
            "safe": {"type": "boolean"},
        },
        required=["query"],
    ),
    "email_send": obj(
        {
            "to": {
                "type": "array",
                "items": {"type": "string", "format": "email", "maxLength": 30},
                "minItems": 1,
                "maxItems": 2,
            },
            "subject": {"type": "string", "maxLength": 30},
            "priority": {"enum": ["low", "normal", "high"]},
        }
    ),
    "calendar": obj(
        {
            "title": {"type": "string", "maxLength": 30},
            "start": {"type": "string", "format": "date-time"},
            "minutes": {"type": "integer", "enum": [15, 30, 60]},
        }
    ),
    "allof_merge": {
        "allOf": [
            obj({"a": {"type": "integer", "minimum": 0, "maximum": 9}}),
            obj({"b": {"type": "boolean"}}),
        ],
    },
    "root_anyof": {
        "anyOf": [
            obj({"city": SHORT}, additionalProperties=False),
            obj({"lat": {"type": "number", "minimum": -90, "maximum": 90}}, additionalProperties=False),
        ]
    },
    "string_no_limit": obj({"name": {"type": "string"}}),
    "number_multiple_of": obj({"step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50}}),
    "min_properties": {
        "type": "object",
        "additionalProperties": {"type": "boolean"},
        "minProperties": 1,
        "maxProperties": 2,
    },
    "pattern_properties": {
        "type": "object",
        "patternProperties": {"^x-[a-z]{1,5}$": {"type": "integer", "minimum": 0, "maximum": 9}},
        "additionalProperties": False,
        "maxProperties": 2,
    },
    "dependent_required_enum": obj(
        {"mode": {"enum": ["fast", "slow"]}, "level": {"type": "integer", "minimum": 1, "maximum": 3}}
    ),
}
