"""The asyncio client against a live server."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import List

import pytest

import cairn
from conftest import Server


def test_async_workflow(server: Server, tmp_path: Path) -> None:
    async def main() -> None:
        async with cairn.AsyncClient(url=server.url) as c:
            v = await c.create_volume("base", size="2M", labels={"role": "golden"})
            assert v.name == "base"
            data = bytes(range(256)) * 4096  # 1 MiB
            await c.import_image("base", io.BytesIO(data))
            s = await c.snapshot("base", tag="v1", labels={"kernel": "6.1"})
            assert s.ref == "base@v1"
            # Fork many at once: the point of the async client.
            forks = await asyncio.gather(*(c.fork("base@v1", f"sb-{i}") for i in range(8)))
            assert sorted(f.name for f in forks) == [f"sb-{i}" for i in range(8)]
            assert all(f.from_snapshot == "base@v1" for f in forks)
            k = await c.clone("sb-0", name="sb-0-copy")
            assert k.cloned_from == "sb-0"
            out = io.BytesIO()
            assert await c.export("sb-3", out) == 2 << 20
            assert out.getvalue()[: len(data)] == data
            path = tmp_path / "snap.raw"
            await c.export("base@v1", str(path))
            assert path.read_bytes()[: len(data)] == data
            await c.rollback("base@v1")
            assert await c.diff("base@v1") != []
            h = await c.warm("sb-1", wait=True)
            assert h.fraction == 1.0
            kinds: List[str] = [e.kind async for e in c.events()]
            assert kinds.count("fork") == 8 and "clone" in kinds
            with pytest.raises(cairn.NotFound):
                await c.volume("nope")
            with pytest.raises(cairn.Conflict):
                await c.fork("base@v1", "sb-1")
            await c.delete_snapshot("base@v1")
            await c.delete_volume("sb-7")
            assert len(await c.volumes()) == 9
            assert (await c.verify())["corrupt"] == 0
            report = await c.gc(dry_run=True, grace="0s")
            assert (await c.gc_status())["last"]["started_unix"] == report["started_unix"]

    asyncio.run(main())
