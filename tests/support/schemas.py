"""The published JSON Schemas as the tests read them: Draft 2020-12 exactly as the spec reads it,
with ``pattern`` in ECMA-262 semantics and formats asserted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import extend

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def ecma_anchors(pattern: str) -> str:
    """``pattern`` with ECMA-262's ``$`` (end of input) in place of Python's.

    JSON Schema patterns are ECMA-262 regular expressions, where ``$`` matches only at the very
    end; Python's ``$`` also matches before a final newline, so ``jsonschema`` (which uses ``re``)
    would accept ``"reports.generate\\n"`` where a publisher's validator (ajv, ...) refuses it.
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
        i += 1
    return "".join(out)


def ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not re.search(ecma_anchors(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 exactly as the spec reads it: `pattern` with ECMA-262 semantics.
Validator = extend(Draft202012Validator, {"pattern": ecma_pattern})

DENIAL_SCHEMA = load("denial.schema.json")
DENIAL = Validator(DENIAL_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
"""Validates what a dead letter carries in ``x-warden-denial``."""
