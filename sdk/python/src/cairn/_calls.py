"""What each API call sends and how its answer is read, shared by the
blocking and the asyncio client so the two cannot drift apart."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Tuple, TypeVar, Union
from urllib.parse import quote

from ._errors import CairnError, error_for
from ._models import Extent, Hydration, Snapshot, Volume

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:7878"
CHUNK = 1 << 20
Size = Union[int, str]
Labels = Optional[Mapping[str, str]]
Progress = Optional[Callable[[int, Optional[int]], None]]

_SHIFT = {"": 0, "B": 0, "K": 10, "k": 10, "KiB": 10, "M": 20, "MiB": 20, "G": 30, "GiB": 30, "T": 40, "TiB": 40}
_DURATION = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(size: Size) -> int:
    """Bytes from an int or a string such as ``"64K"``, ``"10GiB"`` (binary units, as the CLI)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", size)
    if not m or m.group(2) not in _SHIFT:
        raise ValueError(f"invalid size {size!r}: a number of bytes, optionally with K, M, G, T (or KiB, MiB, GiB, TiB)")
    return int(m.group(1)) << _SHIFT[m.group(2)]


def parse_duration(value: Union[int, float, str]) -> int:
    """Seconds from a number or a string such as ``"0s"``, ``"90s"``, ``"1h"``."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", value)
    if not m:
        raise ValueError(f"invalid duration {value!r}: a number with s, m, h or d, like 90s or 1h")
    return int(m.group(1)) * _DURATION[m.group(2)]


def split_ref(ref: str) -> Tuple[str, str]:
    """``"VOLUME@TAG"`` -> ``("VOLUME", "TAG")``."""
    volume, sep, tag = ref.partition("@")
    if not sep or not volume or not tag:
        raise ValueError(f"{ref!r} is not a snapshot: write it VOLUME@TAG")
    return volume, tag


def since_param(since: Union[None, int, str, datetime]) -> Optional[str]:
    """The ``since`` query value: an event number or an RFC 3339 time."""
    if since is None:
        return None
    if isinstance(since, datetime):
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        return since.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(since)


def q(name: str) -> str:
    return quote(name, safe="")


def volume_path(name: str) -> str:
    return f"/volumes/{q(name)}"


def snapshot_path(ref: str) -> str:
    volume, tag = split_ref(ref)
    return f"/volumes/{q(volume)}/snapshots/{q(tag)}"


def data_path(ref: str) -> str:
    """Where a volume's or a snapshot's bytes are read."""
    return snapshot_path(ref) + "/data" if "@" in ref else volume_path(ref) + "/data"


def check(status: int, body: bytes) -> None:
    """Raises the error an answer carries."""
    if status < 400:
        return
    code: Optional[str] = None
    message: Optional[str] = None
    try:
        import json

        err = json.loads(body)["error"]
        code, message = err.get("code"), err.get("message")
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] or None
    raise error_for(status, code, message)


def unreachable(url: str, exc: Exception) -> CairnError:
    from ._errors import Unavailable

    return Unavailable(0, "unreachable", f"cannot reach cairn at {url}: {exc}")


def _drop_none(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reader of its JSON answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Optional[Dict[str, Any]] = None
    params: Optional[Dict[str, Any]] = None


def _none(_: Any) -> None:
    return None


def _identity(d: Any) -> Dict[str, Any]:
    return dict(d)


def create_volume(name: str, size: Size, chunk_size: Optional[Size], labels: Labels) -> Call[Volume]:
    body = _drop_none(
        {
            "name": name,
            "size": parse_size(size),
            "chunk_size": None if chunk_size is None else parse_size(chunk_size),
            "labels": dict(labels) if labels else None,
        }
    )
    return Call("POST", "/volumes", Volume.from_json, json=body)


def volumes() -> Call[List[Volume]]:
    return Call("GET", "/volumes", lambda d: [Volume.from_json(v) for v in d["volumes"]])


def volume(name: str) -> Call[Volume]:
    return Call("GET", volume_path(name), Volume.from_json)


def resize(name: str, size: Size) -> Call[Volume]:
    return Call("PATCH", volume_path(name), Volume.from_json, json={"size": parse_size(size)})


def delete_volume(name: str, keep_snapshots: bool) -> Call[None]:
    params = {"keep_snapshots": "true" if keep_snapshots else "false"}
    return Call("DELETE", volume_path(name), _none, params=params)


def snapshot(name: str, tag: Optional[str], labels: Labels) -> Call[Snapshot]:
    body = _drop_none({"tag": tag, "labels": dict(labels) if labels else None})
    return Call("POST", volume_path(name) + "/snapshots", Snapshot.from_json, json=body)


def snapshots(name: Optional[str]) -> Call[List[Snapshot]]:
    path = volume_path(name) + "/snapshots" if name else "/snapshots"
    return Call("GET", path, lambda d: [Snapshot.from_json(s) for s in d["snapshots"]])


def get_snapshot(ref: str) -> Call[Snapshot]:
    return Call("GET", snapshot_path(ref), Snapshot.from_json)


def delete_snapshot(ref: str) -> Call[None]:
    return Call("DELETE", snapshot_path(ref), _none)


def fork(ref: str, name: str, size: Optional[Size], require_labels: Labels) -> Call[Volume]:
    body = _drop_none(
        {
            "name": name,
            "size": None if size is None else parse_size(size),
            "require_labels": dict(require_labels) if require_labels else None,
        }
    )
    return Call("POST", snapshot_path(ref) + "/fork", Volume.from_json, json=body)


def clone(name: str, new: Optional[str], size: Optional[Size]) -> Call[Volume]:
    body = _drop_none({"name": new, "size": None if size is None else parse_size(size)})
    return Call("POST", volume_path(name) + "/clone", Volume.from_json, json=body)


def rollback(ref: str) -> Call[Volume]:
    volume, tag = split_ref(ref)
    return Call("POST", volume_path(volume) + "/rollback", Volume.from_json, json={"tag": tag})


def diff(ref: str, base: Optional[str]) -> Call[List[Extent]]:
    params = _drop_none({"base": base})
    return Call("GET", snapshot_path(ref) + "/diff", lambda d: [Extent.from_json(e) for e in d], params=params)


def start_warm(name: str) -> Call[Hydration]:
    return Call("POST", volume_path(name) + "/warm", Hydration.from_json)


def events_page(volume: Optional[str], since: Optional[str], limit: int) -> Call[List[Any]]:
    params = _drop_none({"volume": volume, "since": since, "limit": limit})
    return Call("GET", "/events", lambda d: list(d["events"]), params=params)


def gc(dry_run: bool, grace: Union[int, float, str]) -> Call[Dict[str, Any]]:
    body = {"dry_run": dry_run, "grace_seconds": parse_duration(grace)}
    return Call("POST", "/gc", _identity, json=body)


def gc_status() -> Call[Dict[str, Any]]:
    return Call("GET", "/gc", _identity)


def verify(target: Optional[str]) -> Call[Dict[str, Any]]:
    body: Dict[str, Any] = {}
    if target:
        volume, _, tag = target.partition("@")
        body = _drop_none({"volume": volume, "tag": tag or None})
    return Call("POST", "/verify", _identity, json=body)


def usage() -> Call[Dict[str, Any]]:
    return Call("GET", "/usage", _identity)
