"""Validation of HAR documents against the vendored HAR 1.2 JSON schema (see har_schema/README.md)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT6

SCHEMA_DIR = Path(__file__).resolve().parent / "har_schema"


@cache
def _validator() -> jsonschema.Draft6Validator:
    schemas = {path.name: json.loads(path.read_text()) for path in SCHEMA_DIR.glob("*.json")}
    registry: Registry[Any] = Registry().with_resources(
        (name, Resource.from_contents(schema, default_specification=DRAFT6)) for name, schema in schemas.items())
    return jsonschema.Draft6Validator(schemas["har.json"], registry=registry,
                                      format_checker=jsonschema.Draft6Validator.FORMAT_CHECKER)


def assert_valid_har(document: dict[str, Any]) -> None:
    """Fails with every schema violation, plus the devtools import rules the schema leaves loose."""
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(document)]
    assert not errors, "HAR 1.2 schema violations:\n" + "\n".join(errors[:20])
    log = document["log"]
    assert log["pages"], "devtools expect log.pages"
    for entry in log["entries"]:
        timings = entry["timings"]
        assert all(timings[k] >= 0 for k in ("send", "wait", "receive")), timings
        assert all(v >= -1 for v in timings.values()), timings
        assert entry["time"] >= 0 and entry["cache"] == {}
        for message in (entry["request"], entry["response"]):
            assert isinstance(message["headersSize"], int) and isinstance(message["bodySize"], int)
        assert isinstance(entry["response"]["content"]["size"], int)
        if "postData" in entry["request"]:
            assert "mimeType" in entry["request"]["postData"]
