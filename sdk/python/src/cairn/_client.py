"""The blocking :class:`Client` and the asyncio :class:`AsyncClient`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import datetime
from typing import (
    IO,
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

import httpx

from . import _calls as calls
from ._calls import CHUNK, Call, Labels, Progress, Size
from ._errors import CairnError
from ._models import Event, Extent, Hydration, Snapshot, Volume

T = TypeVar("T")
Source = Union[str, "os.PathLike[str]", IO[bytes]]
Since = Union[None, int, str, datetime]
EVENTS_PAGE = 1000
# Uploads and downloads of whole images: the server may take a while to
# answer after the last byte (it commits the import), so reads wait longer.
TRANSFER_READ_TIMEOUT = 600.0


def _setup(url: Optional[str], token: Optional[str]) -> Tuple[str, Dict[str, str]]:
    base = (url or os.environ.get("CAIRN_SERVER") or calls.DEFAULT_URL).rstrip("/")
    token = token if token is not None else os.environ.get("CAIRN_TOKEN")
    headers = {"User-Agent": "cairn-client-python/0.1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return base, headers


@contextlib.contextmanager
def _opened(source: Source, mode: str) -> Iterator[IO[bytes]]:
    """A file object for a path (opened and closed here) or the caller's own."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, mode) as f:
            yield f
    else:
        yield source


def _remaining(f: IO[bytes]) -> Optional[int]:
    """Bytes left in a seekable file, None for a pipe or a stream."""
    try:
        if not f.seekable():
            return None
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, ValueError, AttributeError):
        return None


def _import_call(name: str, offset: int, size: Optional[Size], total: Optional[int]) -> Tuple[str, Dict[str, Any], Dict[str, str]]:
    params: Dict[str, Any] = {"offset": offset}
    if size is not None:
        params["size"] = calls.parse_size(size)
    headers = {"Content-Type": "application/octet-stream"}
    if total is not None:
        headers["Content-Length"] = str(total)
    return calls.volume_path(name) + "/data", params, headers


def _total_of(response: httpx.Response) -> Optional[int]:
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


class Client:
    """A blocking client of one cairn server.

    ``url`` defaults to ``$CAIRN_SERVER`` (else ``http://127.0.0.1:7878``),
    ``token`` to ``$CAIRN_TOKEN``. Use it as a context manager or call
    :meth:`close`.
    """

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 30.0) -> None:
        self.url, headers = _setup(url, token)
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        try:
            r = self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as e:
            raise calls.unreachable(self.url, e) from e
        calls.check(r.status_code, r.content)
        return call.parse(r.json() if r.content else None)

    def create_volume(self, name: str, size: Size, chunk_size: Optional[Size] = None, labels: Labels = None) -> Volume:
        return self._run(calls.create_volume(name, size, chunk_size, labels))

    def volumes(self) -> List[Volume]:
        return self._run(calls.volumes())

    def volume(self, name: str) -> Volume:
        return self._run(calls.volume(name))

    def resize(self, name: str, size: Size) -> Volume:
        return self._run(calls.resize(name, size))

    def delete_volume(self, name: str, keep_snapshots: bool = False) -> None:
        self._run(calls.delete_volume(name, keep_snapshots))

    def snapshot(self, name: str, tag: Optional[str] = None, labels: Labels = None) -> Snapshot:
        return self._run(calls.snapshot(name, tag, labels))

    def snapshots(self, name: Optional[str] = None) -> List[Snapshot]:
        return self._run(calls.snapshots(name))

    def get_snapshot(self, ref: str) -> Snapshot:
        return self._run(calls.get_snapshot(ref))

    def delete_snapshot(self, ref: str) -> None:
        self._run(calls.delete_snapshot(ref))

    def fork(self, ref: str, name: str, size: Optional[Size] = None, require_labels: Labels = None) -> Volume:
        return self._run(calls.fork(ref, name, size, require_labels))

    def clone(self, volume: str, name: Optional[str] = None, size: Optional[Size] = None) -> Volume:
        """Snapshot ``volume`` now and fork it as ``name`` (default
        ``VOLUME-clone-<unix-ts>``); the result has ``cloned_from`` and
        ``from_snapshot``."""
        return self._run(calls.clone(volume, name, size))

    def rollback(self, ref: str) -> Volume:
        return self._run(calls.rollback(ref))

    def diff(self, ref: str, base: Optional[str] = None) -> List[Extent]:
        return self._run(calls.diff(ref, base))

    def usage(self) -> Dict[str, Any]:
        """Space figures of the token's namespace and the last GC report."""
        return self._run(calls.usage())

    def gc(self, dry_run: bool = False, grace: Union[int, float, str] = "1h") -> Dict[str, Any]:
        return self._run(calls.gc(dry_run, grace))

    def gc_status(self) -> Dict[str, Any]:
        """The GC in progress (``running``: phase and counters, or None) and the last report (``last``)."""
        return self._run(calls.gc_status())

    def verify(self, target: Optional[str] = None) -> Dict[str, Any]:
        """Scrubs ``NAME``, ``NAME@TAG`` or (None) everything the token sees."""
        return self._run(calls.verify(target))

    def events(self, volume: Optional[str] = None, since: Since = None) -> Iterator[Event]:
        """Every matching audit event, oldest first, fetched page by page."""
        cursor = calls.since_param(since)
        while True:
            page = self._run(calls.events_page(volume, cursor, EVENTS_PAGE))
            for e in page:
                yield Event.from_json(e)
            if len(page) < EVENTS_PAGE:
                return
            cursor = str(int(page[-1]["seq"]) + 1)

    def warm(self, name: str, wait: bool = True, progress: Optional[Callable[[float], None]] = None, poll: float = 0.2) -> Hydration:
        """Starts fetching a volume's remote data into the local cache; with
        ``wait`` returns when it is done, calling ``progress(fraction)``."""
        h = self._run(calls.start_warm(name))
        while wait:
            h = self.volume(name).hydration or h
            if progress:
                progress(h.fraction)
            if not h.warming:
                break
            time.sleep(poll)
        if h.warm_error:
            raise CairnError(0, "warm_failed", h.warm_error)
        return h

    def import_image(self, name: str, source: Source, offset: int = 0, size: Optional[Size] = None, progress: Progress = None) -> Volume:
        """Streams a raw image (a path or a binary file object) into volume
        ``name`` at ``offset``, creating it when absent. ``progress(done,
        total)`` is called as bytes go out (``total`` None when unknown)."""
        with _opened(source, "rb") as f:
            total = _remaining(f)
            path, params, headers = _import_call(name, offset, size, total)

            def body() -> Iterator[bytes]:
                done = 0
                while True:
                    block = f.read(CHUNK)
                    if not block:
                        return
                    done += len(block)
                    yield block
                    if progress:
                        progress(done, total)

            timeout = httpx.Timeout(self.timeout, read=max(self.timeout, TRANSFER_READ_TIMEOUT))
            try:
                r = self._http.put(path, params=params, headers=headers, content=body(), timeout=timeout)
            except httpx.TransportError as e:
                raise calls.unreachable(self.url, e) from e
        calls.check(r.status_code, r.content)
        return Volume.from_json(r.json()["volume"])

    def export(self, ref: str, dest: Source, progress: Progress = None) -> int:
        """Streams a volume or ``NAME@TAG`` into a path or a binary file
        object; returns the bytes written."""
        done = 0
        try:
            with self._http.stream("GET", calls.data_path(ref)) as r:
                if r.status_code >= 400:
                    calls.check(r.status_code, r.read())
                total = _total_of(r)
                with _opened(dest, "wb") as f:
                    for block in r.iter_bytes(CHUNK):
                        f.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
        except httpx.TransportError as e:
            raise calls.unreachable(self.url, e) from e
        return done


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same methods, as coroutines
    (``events`` is an async iterator). Use ``async with`` or ``await aclose()``."""

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 30.0) -> None:
        self.url, headers = _setup(url, token)
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        try:
            r = await self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as e:
            raise calls.unreachable(self.url, e) from e
        calls.check(r.status_code, r.content)
        return call.parse(r.json() if r.content else None)

    async def create_volume(self, name: str, size: Size, chunk_size: Optional[Size] = None, labels: Labels = None) -> Volume:
        return await self._run(calls.create_volume(name, size, chunk_size, labels))

    async def volumes(self) -> List[Volume]:
        return await self._run(calls.volumes())

    async def volume(self, name: str) -> Volume:
        return await self._run(calls.volume(name))

    async def resize(self, name: str, size: Size) -> Volume:
        return await self._run(calls.resize(name, size))

    async def delete_volume(self, name: str, keep_snapshots: bool = False) -> None:
        await self._run(calls.delete_volume(name, keep_snapshots))

    async def snapshot(self, name: str, tag: Optional[str] = None, labels: Labels = None) -> Snapshot:
        return await self._run(calls.snapshot(name, tag, labels))

    async def snapshots(self, name: Optional[str] = None) -> List[Snapshot]:
        return await self._run(calls.snapshots(name))

    async def get_snapshot(self, ref: str) -> Snapshot:
        return await self._run(calls.get_snapshot(ref))

    async def delete_snapshot(self, ref: str) -> None:
        await self._run(calls.delete_snapshot(ref))

    async def fork(self, ref: str, name: str, size: Optional[Size] = None, require_labels: Labels = None) -> Volume:
        return await self._run(calls.fork(ref, name, size, require_labels))

    async def clone(self, volume: str, name: Optional[str] = None, size: Optional[Size] = None) -> Volume:
        return await self._run(calls.clone(volume, name, size))

    async def rollback(self, ref: str) -> Volume:
        return await self._run(calls.rollback(ref))

    async def diff(self, ref: str, base: Optional[str] = None) -> List[Extent]:
        return await self._run(calls.diff(ref, base))

    async def usage(self) -> Dict[str, Any]:
        return await self._run(calls.usage())

    async def gc(self, dry_run: bool = False, grace: Union[int, float, str] = "1h") -> Dict[str, Any]:
        return await self._run(calls.gc(dry_run, grace))

    async def gc_status(self) -> Dict[str, Any]:
        return await self._run(calls.gc_status())

    async def verify(self, target: Optional[str] = None) -> Dict[str, Any]:
        return await self._run(calls.verify(target))

    async def events(self, volume: Optional[str] = None, since: Since = None) -> AsyncIterator[Event]:
        cursor = calls.since_param(since)
        while True:
            page = await self._run(calls.events_page(volume, cursor, EVENTS_PAGE))
            for e in page:
                yield Event.from_json(e)
            if len(page) < EVENTS_PAGE:
                return
            cursor = str(int(page[-1]["seq"]) + 1)

    async def warm(self, name: str, wait: bool = True, progress: Optional[Callable[[float], None]] = None, poll: float = 0.2) -> Hydration:
        h = await self._run(calls.start_warm(name))
        while wait:
            h = (await self.volume(name)).hydration or h
            if progress:
                progress(h.fraction)
            if not h.warming:
                break
            await asyncio.sleep(poll)
        if h.warm_error:
            raise CairnError(0, "warm_failed", h.warm_error)
        return h

    async def import_image(self, name: str, source: Source, offset: int = 0, size: Optional[Size] = None, progress: Progress = None) -> Volume:
        with _opened(source, "rb") as f:
            total = _remaining(f)
            path, params, headers = _import_call(name, offset, size, total)

            async def body() -> AsyncIterator[bytes]:
                done = 0
                while True:
                    block = await asyncio.to_thread(f.read, CHUNK)
                    if not block:
                        return
                    done += len(block)
                    yield block
                    if progress:
                        progress(done, total)

            timeout = httpx.Timeout(self.timeout, read=max(self.timeout, TRANSFER_READ_TIMEOUT))
            try:
                r = await self._http.put(path, params=params, headers=headers, content=body(), timeout=timeout)
            except httpx.TransportError as e:
                raise calls.unreachable(self.url, e) from e
        calls.check(r.status_code, r.content)
        return Volume.from_json(r.json()["volume"])

    async def export(self, ref: str, dest: Source, progress: Progress = None) -> int:
        done = 0
        try:
            async with self._http.stream("GET", calls.data_path(ref)) as r:
                if r.status_code >= 400:
                    calls.check(r.status_code, await r.aread())
                total = _total_of(r)
                with _opened(dest, "wb") as f:
                    async for block in r.aiter_bytes(CHUNK):
                        await asyncio.to_thread(f.write, block)
                        done += len(block)
                        if progress:
                            progress(done, total)
        except httpx.TransportError as e:
            raise calls.unreachable(self.url, e) from e
        return done
