"""The JSON Schema of study files, as shipped in search_spaces/study.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

from search_spaces.schema import StudySpec

SHIPPED = Path(__file__).with_name("study.schema.json")


def study_schema() -> dict:
    schema = StudySpec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "resweep study", **{k: v for k, v in schema.items() if k != "title"}}


def schema_text() -> str:
    return json.dumps(study_schema(), indent=2, sort_keys=False) + "\n"
