"""The schema corpus: 32 JSON schemas with a prompt each (nested objects, arrays, enums, required
fields, numbers, strings with patterns), for the bundled model on every engine.

Free strings carry a ``maxLength`` and arrays a ``maxItems`` so every reply fits ``MAX_TOKENS``
(a 135M model would otherwise write until the budget ends); the replies are still the model's own.
"""

from __future__ import annotations

from typing import Any

MAX_TOKENS = 96

_S = {"type": "string", "maxLength": 24}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required}


SCHEMAS: list[tuple[str, dict[str, Any], str]] = [
    ("person", _obj({"name": _S, "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
     "Describe a person called Ann who is 31."),
    ("city", _obj({"city": _S, "country": _S}), "What is the capital of France?"),
    ("boolean_answer", _obj({"answer": {"type": "boolean"}}), "Is the sky blue?"),
    ("enum_color", _obj({"color": {"enum": ["red", "green", "blue"]}}), "What color is grass?"),
    ("enum_sentiment", _obj({"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]}}),
     "Classify: I love this movie!"),
    ("number_temp", _obj({"celsius": {"type": "number", "minimum": -90, "maximum": 60}}),
     "How warm is a summer day in Spain?"),
    ("integer_range", _obj({"count": {"type": "integer", "minimum": 1, "maximum": 10}}),
     "How many legs does a spider have?"),
    ("date_pattern", _obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}),
     "When did the first moon landing happen?"),
    ("code_pattern", _obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
     "Give the airport code of London Heathrow."),
    ("email_pattern", _obj({"email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.com$"}}),
     "Make up an email address for Bob."),
    ("phone_pattern", _obj({"phone": {"type": "string", "pattern": "^\\+[0-9]{2} [0-9]{3} [0-9]{4}$"}}),
     "Give a phone number."),
    ("array_strings", _obj({"fruits": {"type": "array", "items": _S, "minItems": 1, "maxItems": 3}}),
     "Name some fruits."),
    ("array_ints", _obj({"primes": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}}),
     "List the first prime numbers."),
    ("array_enum", _obj({"days": {"type": "array", "items": {"enum": ["Mon", "Tue", "Wed", "Thu", "Fri"]},
                                  "maxItems": 3}}), "Which weekdays are best for meetings?"),
    ("nested_address", _obj({"name": _S, "address": _obj({"street": _S, "zip": {"type": "string",
                                                                               "pattern": "^[0-9]{5}$"}})}),
     "Give a person and their address."),
    ("nested_two_levels", _obj({"book": _obj({"title": _S, "author": _obj({"first": _S, "last": _S})})}),
     "Tell me about a famous book."),
    ("array_of_objects", _obj({"items": {"type": "array", "maxItems": 2, "items": _obj(
        {"name": _S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}})}}), "Make a short shopping list."),
    ("optional_fields", _obj({"title": _S, "subtitle": _S, "year": {"type": "integer"}}, required=["title"]),
     "Name a film."),
    ("nullable", _obj({"middle_name": {"type": ["string", "null"], "maxLength": 12}}),
     "What is the middle name of John Smith?"),
    ("any_of", _obj({"value": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}}), "Give me a value."),
    ("const", _obj({"version": {"const": 2}, "ok": {"type": "boolean"}}), "Report the status."),
    ("ref_defs", {"$defs": {"point": _obj({"x": {"type": "integer"}, "y": {"type": "integer"}})},
                  **_obj({"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}})},
     "Give two points on a grid."),
    ("string_length", _obj({"word": {"type": "string", "minLength": 3, "maxLength": 8}}),
     "Give a word that rhymes with cat."),
    ("uuid_like", _obj({"id": {"type": "string", "pattern": "^[0-9a-f]{8}$"}}), "Make an id."),
    ("rating", _obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}, "comment": _S}),
     "Rate a pizza restaurant."),
    ("coordinates", _obj({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                          "lon": {"type": "number", "minimum": -180, "maximum": 180}}),
     "Where is Paris on a map?"),
    ("recipe", _obj({"dish": _S, "minutes": {"type": "integer", "minimum": 1, "maximum": 240},
                     "vegetarian": {"type": "boolean"}}), "Suggest a quick dinner."),
    ("event", _obj({"name": _S, "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                    "room": {"enum": ["A", "B", "C"]}}), "Schedule a meeting."),
    ("top_level_array", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                         "minItems": 3, "maxItems": 3}, "Give three digits."),
    ("top_level_enum", {"enum": ["yes", "no"]}, "Is water wet?"),
    ("matrix", _obj({"rows": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}}}), "Give a 2x2 matrix."),
    ("deep_nesting", _obj({"a": _obj({"b": _obj({"c": _obj({"d": {"type": "integer"}})})})}),
     "Fill in the nested value."),
]
