"""Parameter keys: the names a study varies (`space`, `baseline`, `vary`, constraints).

A key is a model field (`depth`, `residual`, `block`, `shortcut`, `width`, ...; also
written `model.depth`) or a dotted path into another section (`train.lr`,
`data.train_size`). Each key's values are checked against the same field of the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import Annotated

from search_spaces.schema import SECTION_SPECS


@dataclass(frozen=True)
class ParamKey:
    """One varied field: `section` is model, data or train; `text` as the user wrote it."""

    section: str
    field: str
    text: str

    @property
    def dotted(self) -> str:
        """Canonical form: "model.depth", "train.lr"."""
        return f"{self.section}.{self.field}"

    @property
    def short(self) -> str:
        """For names and tables: "depth", "lr", "train_size"."""
        return self.field


def allowed_keys_text() -> str:
    model = ", ".join(SECTION_SPECS["model"].model_fields)
    return f"a model field ({model}) or train.<field> / data.<field>"


def parse_key(text: object) -> ParamKey:
    """"depth" -> ParamKey("model", "depth"); raises ValueError with what is allowed."""
    if not isinstance(text, str):
        raise ValueError(f"got the key {text!r}; {allowed_keys_text()}")
    section, _, field = text.rpartition(".")
    spec = SECTION_SPECS.get(section or "model")
    if spec is None or not section and field not in spec.model_fields:
        raise ValueError(f"got the key {text!r}; {allowed_keys_text()}")
    section = section or "model"
    if field not in spec.model_fields:
        raise ValueError(f"got the key {text!r}; {section} has: "
                         f"{', '.join(spec.model_fields)}")
    return ParamKey(section, field, text)


@lru_cache(maxsize=None)
def _adapter(section: str, field: str) -> TypeAdapter:
    info = SECTION_SPECS[section].model_fields[field]
    return TypeAdapter(Annotated[info.annotation, info], config=ConfigDict(strict=True))


def check_value(key: ParamKey, value: object) -> str | None:
    """None when `value` is allowed for `key`, else "got ...; should be ..."."""
    if value is None and key.section == "model":
        return f"got None; {key.text} needs a value"
    try:
        _adapter(key.section, key.field).validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        return f"got {value!r}; {_lower_first(first['msg'])}"
    return None


def coerce_value(key: ParamKey, value: object) -> object:
    """The checked value in the field's type (1 -> 1.0 for a float field)."""
    return _adapter(key.section, key.field).validate_python(value)


def _lower_first(msg: str) -> str:
    msg = msg.replace("Input should be", "should be")
    return msg[:1].lower() + msg[1:]


def is_list_field(key: ParamKey) -> bool:
    """Fields whose single value is a list (milestones, stages): a list is not any-of."""
    return key.field in ("milestones", "stages")
