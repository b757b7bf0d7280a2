"""The web console in a real headless Chromium against a live server with
volumes, forks and clones: the lineage SVG, the numbers and the events."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import cairn
from conftest import Server

MiB = 1 << 20


def chromium() -> Optional[str]:
    return os.environ.get("CAIRN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class Elements(HTMLParser):
    """Every element's tag, attributes and direct text."""

    def __init__(self) -> None:
        super().__init__()
        self.items: List[Dict[str, str]] = []
        self._stack: List[Dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: List[tuple[str, Optional[str]]]) -> None:
        item = {k: v or "" for k, v in attrs}
        item["<tag>"] = tag
        item["<text>"] = ""
        self.items.append(item)
        self._stack.append(item)

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()["<tag>"] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._stack:
            self._stack[-1]["<text>"] += data

    def with_attr(self, name: str) -> List[Dict[str, str]]:
        return [i for i in self.items if name in i]

    def by_id(self, ident: str) -> Dict[str, str]:
        found = [i for i in self.items if i.get("id") == ident]
        assert found, f"no element #{ident}"
        return found[0]


def render(url: str, fragment: str = "", screenshot: Optional[Path] = None) -> Elements:
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian package `chromium`): the console test needs a real browser")
    with tempfile.TemporaryDirectory() as profile:
        base = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=15000",
        ]
        out = subprocess.run(base + ["--dump-dom", url + "/ui/" + fragment],
                             capture_output=True, timeout=120, check=True)
        if screenshot is not None:
            subprocess.run(base + ["--window-size=1400,1300", f"--screenshot={screenshot}", url + "/ui/" + fragment],
                           capture_output=True, timeout=120, check=True)
    parser = Elements()
    parser.feed(out.stdout.decode())
    return parser


def seed(c: cairn.Client) -> None:
    c.create_volume("golden", size="8M", labels={"os": "debian"})
    c.import_image("golden", io.BytesIO(os.urandom(4 * MiB)))
    c.snapshot("golden", tag="v1")
    c.fork("golden@v1", "sandbox-1")
    c.fork("golden@v1", "sandbox-2")
    c.import_image("sandbox-1", io.BytesIO(os.urandom(MiB)), offset=4 * MiB)
    c.clone("sandbox-1", name="sandbox-1-copy")
    c.gc(dry_run=True, grace="0s")


def test_console_shows_lineage_numbers_and_events(server: Server, tmp_path: Path) -> None:
    with cairn.Client(url=server.url) as c:
        seed(c)
        volumes = {v.name: v for v in c.volumes()}
        clone_src = volumes["sandbox-1-copy"].from_snapshot
        usage = c.usage()
    shot = os.environ.get("CAIRN_CONSOLE_SCREENSHOT")
    dom = render(server.url, screenshot=Path(shot) if shot else None)

    assert dom.by_id("status")["<text>"].startswith("Namespace default"), dom.by_id("status")
    nodes = {i["data-volume"]: i for i in dom.with_attr("data-volume")}
    assert set(nodes) == set(volumes)
    snaps = {i["data-snapshot"]: i for i in dom.with_attr("data-snapshot")}
    assert "golden@v1" in snaps and clone_src in snaps
    assert nodes["sandbox-1"].get("data-edge") == "fork"
    assert nodes["sandbox-1-copy"].get("data-edge") == "clone"
    assert "data-edge" not in nodes["golden"]
    edges = {(p["data-from"], p["data-to"]) for p in dom.with_attr("data-from")}
    assert ("golden", "golden@v1") in edges
    assert ("golden@v1", "sandbox-1") in edges and ("golden@v1", "sandbox-2") in edges
    assert (clone_src, "sandbox-1-copy") in edges

    # Numbers: the table's stored/unique bytes are the API's.
    stored = {i["data-stored-bytes"] for i in dom.with_attr("data-stored-bytes")}
    assert {str(v.stored_bytes) for v in volumes.values()} == stored
    assert dom.by_id("space-stored")["data-bytes"] == str(usage["stored_bytes"])
    assert dom.by_id("space-logical")["data-bytes"] == str(usage["logical_bytes"])
    assert usage["logical_bytes"] > usage["stored_bytes"] > 0
    assert dom.by_id("space-dedup-ratio")["<text>"] == f"{usage['dedup_ratio']:.2f}×"
    assert "data-reclaimed-objects" in dom.by_id("gc-report")

    kinds = [i["data-event"] for i in dom.with_attr("data-event")]
    for kind in ("create", "snapshot", "fork", "clone", "gc"):
        assert kind in kinds, kinds
    seqs = [int(i["data-seq"]) for i in dom.with_attr("data-event")]
    assert seqs == sorted(seqs, reverse=True), "newest first"


def test_console_with_tokens(token_server: Server) -> None:
    with cairn.Client(url=token_server.url, token="alice-secret") as alice:
        alice.create_volume("alice-vol", size="1M")
    with cairn.Client(url=token_server.url, token="bob-secret") as bob:
        bob.create_volume("bob-vol", size="1M")
    no_token = render(token_server.url)
    assert "token" in no_token.by_id("status")["<text>"]
    assert no_token.with_attr("data-volume") == []
    dom = render(token_server.url, fragment="#token=alice-secret")
    assert [i["data-volume"] for i in dom.with_attr("data-volume")] == ["alice-vol"]
