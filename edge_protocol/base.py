"""Base classes for everything on the wire: frozen, unknown fields rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Frozen model that rejects unknown fields, so a typo or a newer peer fails loudly, not silently."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
