"""Starts a real `cairn serve` (data dir in a temp dir, free loopback ports)
for the tests; `CAIRN_BIN` names the binary (default: the workspace's
debug build)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _binary() -> str:
    explicit = os.environ.get("CAIRN_BIN")
    if explicit:
        return explicit
    for profile in ("debug", "release"):
        candidate = ROOT / "target" / profile / "cairn"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("no cairn binary: run `cargo build --bin cairn` or set CAIRN_BIN")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    process: "subprocess.Popen[bytes]"


def start_server(tmp: Path, tokens: Optional[Dict[str, str]] = None) -> Server:
    args = [
        _binary(),
        "serve",
        "--data-dir",
        str(tmp / "data"),
        "--listen",
        f"127.0.0.1:{_free_port()}",
        "--nbd-listen",
        "127.0.0.1:0",
    ]
    if tokens is not None:
        token_file = tmp / "tokens"
        token_file.write_text("".join(f"{t} {ns}\n" for t, ns in tokens.items()))
        args += ["--tokens", str(token_file)]
    url = f"http://{args[5]}"
    log = open(tmp / "server.log", "wb")
    env = dict(os.environ, RUST_LOG="warn")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"cairn serve did not start: {(tmp / 'server.log').read_text()}")
        time.sleep(0.05)
    return Server(url=url, data_dir=tmp / "data", process=process)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path)
    yield s
    stop_server(s)


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path, tokens={"alice-secret": "alice", "bob-secret": "bob", "ops-secret": "ops admin"})
    yield s
    stop_server(s)
