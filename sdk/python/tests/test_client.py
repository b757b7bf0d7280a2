"""The blocking client against a live server: the whole workflow, every
error class, paging, warm, tokens and a large streamed round trip."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

import cairn
from conftest import Server, start_server, stop_server

MiB = 1 << 20


def pattern(seed: int, length: int) -> bytes:
    """Incompressible, seed-dependent bytes."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.blake2b(f"{seed}:{counter}".encode(), digest_size=64).digest()
        counter += 1
    return bytes(out[:length])


def test_workflow(server: Server, tmp_path: Path) -> None:
    with cairn.Client(url=server.url) as c:
        v = c.create_volume("dev", size="4M", labels={"os": "debian"})
        assert isinstance(v, cairn.Volume)
        assert (v.name, v.size, v.state, v.labels) == ("dev", 4 * MiB, "ready", {"os": "debian"})
        assert v.namespace == "default" and v.chunk_size > 0

        image = pattern(1, 2 * MiB)
        seen: List[Tuple[int, Optional[int]]] = []
        v = c.import_image("dev", io.BytesIO(image), progress=lambda d, t: seen.append((d, t)))
        assert v.stored_bytes > 0
        assert seen and seen[-1] == (2 * MiB, 2 * MiB)

        s = c.snapshot("dev", tag="golden", labels={"kernel": "6.1"})
        assert isinstance(s, cairn.Snapshot)
        assert (s.volume, s.tag, s.ref, s.labels) == ("dev", "golden", "dev@golden", {"kernel": "6.1"})

        f = c.fork("dev@golden", "ci-1", require_labels={"kernel": "6.1"})
        assert f.from_snapshot == "dev@golden" and f.cloned_from is None
        k = c.clone("dev", name="dev-copy")
        assert k.cloned_from == "dev" and k.from_snapshot and k.from_snapshot.startswith("dev@")
        auto = c.clone("dev")
        assert auto.name.startswith("dev-clone-")

        # Change 4 KiB at 1 MiB, snapshot, diff against golden.
        c.import_image("dev", io.BytesIO(b"\xab" * 4096), offset=MiB)
        c.snapshot("dev", tag="after")
        extents = c.diff("dev@after", base="golden")
        assert extents and all(isinstance(e, cairn.Extent) for e in extents)
        assert any(e.offset <= MiB < e.offset + e.length for e in extents)
        assert c.diff("dev@golden") != []  # against the empty disk

        c.rollback("dev@golden")
        out = tmp_path / "dev.raw"
        assert c.export("dev", str(out)) == 4 * MiB
        assert out.read_bytes()[: 2 * MiB] == image
        buf = io.BytesIO()
        c.export("dev@after", buf)
        assert buf.getvalue()[MiB : MiB + 4096] == b"\xab" * 4096

        assert {x.name for x in c.volumes()} >= {"dev", "ci-1", "dev-copy", auto.name}
        assert c.volume("ci-1").hydration is not None
        assert [x.tag for x in c.snapshots("dev")][:1] == ["golden"] or "golden" in {x.tag for x in c.snapshots("dev")}
        assert any(x.ref == "dev@golden" for x in c.snapshots())
        assert c.get_snapshot("dev@after").tag == "after"
        assert c.resize("dev", size="8M").size == 8 * MiB

        report = c.verify("dev@golden")
        assert report["missing"] == 0 and report["corrupt"] == 0 and report["objects_checked"] > 0
        assert c.verify()["corrupt"] == 0

        c.delete_snapshot("dev@after")
        c.delete_volume("dev-copy")
        c.delete_volume("dev", keep_snapshots=True)
        assert all(x.name != "dev" for x in c.volumes())
        assert any(x.ref == "dev@golden" for x in c.snapshots())

        gc = c.gc(dry_run=True, grace="0s")
        assert gc["dry_run"] is True and gc["grace_seconds"] == 0
        assert c.usage()["last_gc"]["dry_run"] is True
        status = c.gc_status()
        assert status["running"] is None
        assert status["last"]["started_unix"] == gc["started_unix"]

        kinds = [e.kind for e in c.events()]
        for kind in ("create", "snapshot", "fork", "clone", "rollback", "resize", "delete", "gc"):
            assert kind in kinds, kind
        assert all(isinstance(e, cairn.Event) for e in c.events(volume="ci-1"))


def test_events_iterate_over_every_page(server: Server) -> None:
    with cairn.Client(url=server.url) as c:
        c.create_volume("ev", size="1M")
        for i in range(7):
            c.snapshot("ev", tag=f"t{i}")
        cairn._client.EVENTS_PAGE, saved = 3, cairn._client.EVENTS_PAGE
        try:
            paged = [e.seq for e in c.events(volume="ev")]
        finally:
            cairn._client.EVENTS_PAGE = saved
        whole = [e.seq for e in c.events(volume="ev")]
        assert paged == whole and len(whole) == 8
        assert len(set(whole)) == 8
        later = [e.seq for e in c.events(volume="ev", since=whole[5])]
        assert later == whole[5:]


def test_every_error_class(server: Server, tmp_path: Path) -> None:
    with cairn.Client(url=server.url) as c:
        c.create_volume("e", size="1M")
        c.snapshot("e", tag="base", labels={"tier": "gold"})

        with pytest.raises(cairn.NotFound) as nf:
            c.volume("missing")
        assert nf.value.status == 404 and nf.value.code and "missing" in nf.value.message

        with pytest.raises(cairn.Conflict) as cf:
            c.create_volume("e", size="1M")
        assert cf.value.status == 409

        with pytest.raises(cairn.PreconditionFailed) as pf:
            c.fork("e@base", "f", require_labels={"tier": "silver"})
        assert pf.value.status == 412

        with pytest.raises(cairn.CairnError) as bad:
            c.create_volume("Not_Valid", size="1M")
        assert bad.value.status == 400 and type(bad.value) is cairn.CairnError
        assert "RFC 1123" in bad.value.message or "label" in bad.value.message

        with pytest.raises(cairn.CairnError) as big:
            c.import_image("e", io.BytesIO(b"x" * (2 * MiB)))
        assert big.value.status == 413

        with pytest.raises(ValueError):
            c.fork("no-tag", "x")
        with pytest.raises(ValueError):
            c.create_volume("x", size="12 parsecs")

    with cairn.Client(url="http://127.0.0.1:1") as dead:
        with pytest.raises(cairn.Unavailable) as un:
            dead.volumes()
        assert un.value.status == 0 and un.value.code == "unreachable"


def test_unavailable_when_the_object_store_is_down(tmp_path: Path) -> None:
    """A remote store that refuses connections and nothing cached: 503."""
    from conftest import _binary, _free_port
    import subprocess
    import time
    import urllib.request

    port = _free_port()
    env = dict(
        os.environ,
        RUST_LOG="warn",
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}",
        AWS_ALLOW_HTTP="true",
    )
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    p = subprocess.Popen(
        [_binary(), "serve", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}",
         "--nbd-listen", "127.0.0.1:0", "--object-store", "s3://bucket/p"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                if p.poll() is not None:
                    pytest.fail("server exited: " + (tmp_path / "server.log").read_text())
                time.sleep(0.05)
        with cairn.Client(url=url, timeout=60) as c:
            with pytest.raises(cairn.Unavailable) as un:
                c.gc(dry_run=True, grace="0s")
            assert un.value.status == 503 and un.value.message
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_tokens_namespaces_and_forbidden(token_server: Server) -> None:
    alice = cairn.Client(url=token_server.url, token="alice-secret")
    bob = cairn.Client(url=token_server.url, token="bob-secret")
    nobody = cairn.Client(url=token_server.url, token="")
    wrong = cairn.Client(url=token_server.url, token="guess")
    try:
        v = alice.create_volume("secret", size="1M")
        assert v.namespace == "alice"
        with pytest.raises(cairn.NotFound):
            bob.volume("secret")
        assert bob.volumes() == []
        with pytest.raises(cairn.Unauthorized) as u1:
            nobody.volumes()
        assert u1.value.status == 401
        with pytest.raises(cairn.Unauthorized):
            wrong.volume("secret")
        with pytest.raises(cairn.Forbidden) as fb:
            alice.gc(dry_run=True)
        assert fb.value.status == 403 and fb.value.code == "forbidden"
        with pytest.raises(cairn.Forbidden):
            alice.gc_status()
        bob.create_volume("bobs", size="1M")
        # A tenant's scrub covers its namespace, an admin's the whole store.
        assert alice.verify()["targets"] == 1
        with cairn.Client(url=token_server.url, token="ops-secret") as ops:
            assert ops.verify()["targets"] == 2
            report = ops.gc(dry_run=True, grace="0s")
            assert report["dry_run"] is True and report["scanned_objects"] >= 0
            assert ops.volumes() == []
    finally:
        for c in (alice, bob, nobody, wrong):
            c.close()


def test_token_from_the_environment(token_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_SERVER", token_server.url)
    monkeypatch.setenv("CAIRN_TOKEN", "bob-secret")
    with cairn.Client() as c:
        assert c.create_volume("mine", size="64K").namespace == "bob"


def test_warm_reports_progress(server: Server) -> None:
    with cairn.Client(url=server.url) as c:
        c.import_image("w", io.BytesIO(pattern(2, MiB)))
        fractions: List[float] = []
        h = c.warm("w", wait=True, progress=fractions.append)
        assert isinstance(h, cairn.Hydration)
        assert h.fraction == 1.0 and not h.warming
        assert fractions and fractions[-1] == 1.0


def test_256_mib_round_trip_in_bounded_memory(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "big.raw"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(256):
            # Half the MiBs repeat (dedup), half are unique.
            block = pattern(i % 128, MiB)
            digest.update(block)
            f.write(block)
    with cairn.Client(url=server.url, timeout=120) as c:
        tracemalloc.start()
        try:
            v = c.import_image("big", str(src))
            _, import_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            out = tmp_path / "out.raw"
            n = c.export("big", str(out))
            _, export_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert v.size == 256 * MiB and n == 256 * MiB
    check = hashlib.sha256()
    with open(out, "rb") as f:
        while block := f.read(4 * MiB):
            check.update(block)
    assert check.hexdigest() == digest.hexdigest()
    # Streaming: the client never holds more than a few MiB of the image.
    assert import_peak < 16 * MiB, import_peak
    assert export_peak < 16 * MiB, export_peak
    print(f"256 MiB round trip: client peak {import_peak / MiB:.1f} MiB import, {export_peak / MiB:.1f} MiB export")
