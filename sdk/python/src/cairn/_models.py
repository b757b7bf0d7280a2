"""Typed views of the REST API's response bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Mapping, Optional


def _time(text: str) -> datetime:
    # Python < 3.11 does not read a trailing "Z".
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Hydration:
    """How much of a volume's data is local (readable without the object store)."""

    total_bytes: int
    local_bytes: int
    fraction: float
    warming: bool
    warm_error: Optional[str] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Hydration":
        return cls(
            total_bytes=int(d["total_bytes"]),
            local_bytes=int(d["local_bytes"]),
            fraction=float(d["fraction"]),
            warming=bool(d["warming"]),
            warm_error=d.get("warm_error"),
        )


@dataclass(frozen=True)
class Volume:
    """A volume (a virtual disk)."""

    name: str
    namespace: str
    size: int
    chunk_size: int
    state: str
    created_at: datetime
    updated_at: datetime
    labels: Dict[str, str]
    stored_bytes: int
    unique_bytes: int
    cloned_from: Optional[str] = None
    from_snapshot: Optional[str] = None
    base_pending: bool = False
    hydration: Optional[Hydration] = None
    damage: Optional[str] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Volume":
        h = d.get("hydration")
        return cls(
            name=d["name"],
            namespace=d["namespace"],
            size=int(d["size"]),
            chunk_size=int(d["chunk_size"]),
            state=d["state"],
            created_at=_time(d["created_at"]),
            updated_at=_time(d["updated_at"]),
            labels=dict(d.get("labels") or {}),
            stored_bytes=int(d["stored_bytes"]),
            unique_bytes=int(d["unique_bytes"]),
            cloned_from=d.get("cloned_from"),
            from_snapshot=d.get("from_snapshot"),
            base_pending=bool(d.get("base_pending", False)),
            hydration=Hydration.from_json(h) if h else None,
            damage=d.get("damage"),
        )


@dataclass(frozen=True)
class Snapshot:
    """A snapshot, written ``VOLUME@TAG``."""

    volume: str
    tag: str
    size: int
    created_at: datetime
    labels: Dict[str, str]
    root: str
    sealed: bool = True

    @property
    def ref(self) -> str:
        """``VOLUME@TAG``."""
        return f"{self.volume}@{self.tag}"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Snapshot":
        return cls(
            volume=d["volume"],
            tag=d["tag"],
            size=int(d["size"]),
            created_at=_time(d["created_at"]),
            labels=dict(d.get("labels") or {}),
            root=d["root"],
            sealed=bool(d.get("sealed", True)),
        )


@dataclass(frozen=True)
class Event:
    """One entry of the audit log."""

    seq: int
    time: datetime
    namespace: str
    actor: str
    kind: str
    volume: Optional[str] = None
    tag: Optional[str] = None
    detail: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Event":
        detail = d.get("detail")
        return cls(
            seq=int(d["seq"]),
            time=_time(d["time"]),
            namespace=d["namespace"],
            actor=d["actor"],
            kind=d["kind"],
            volume=d.get("volume"),
            tag=d.get("tag"),
            detail=dict(detail) if isinstance(detail, dict) else {},
        )


@dataclass(frozen=True)
class Extent:
    """A changed byte range."""

    offset: int
    length: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Extent":
        return cls(offset=int(d["offset"]), length=int(d["length"]))
