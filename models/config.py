"""What every model's configuration dataclass shares."""
from __future__ import annotations

from dataclasses import asdict


class Config:
    """Mixin for a ``@dataclass`` config: a plain dict for weights files and
    records, and back. ``from_dict`` ignores keys the class does not know, so
    a file written by a newer trainer with extra fields still loads."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})
