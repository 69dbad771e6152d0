"""A dead host costs one connect timeout, not one per call: after it could not be reached, every
call fails at once (saying so) for ``ssh.dead_after_s``, then one attempt is made again."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mdevtest.errors import ConnectFailed
from mdevtest.inventory import Host
from mdevtest.remote import Remote, _bound_transport


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def host(tmp_path: Path, port: int, dead_after_s: float) -> Host:
    ssh = {"key_file": str(key_file(tmp_path)), "port": port, "connect_timeout_s": 5,
           "dead_after_s": dead_after_s}  # fmt: skip
    return Host.model_validate({"name": "host-b", "address": "127.0.0.1", "ssh": ssh})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: connections are refused


def test_an_unreachable_host_fails_at_once_and_is_probed_until_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mdevtest.remote.DEAD_PROBE_EVERY_S", 0.5)
    port = closed_port()
    remote = Remote(host(tmp_path, port, dead_after_s=30.0))
    with pytest.raises(ConnectFailed, match="cannot reach"):
        remote.run(["true"], timeout=5)
    assert remote.unreachable is not None
    started = time.monotonic()
    for _ in range(20):  # cleanup, diagnosis, reports: none of them waits
        with pytest.raises(ConnectFailed, match=r"unreachable \(not retried for a while\)"):
            remote.run(["true"], timeout=5)
    assert time.monotonic() - started < 1.0
    time.sleep(0.6)  # probed again: still refused
    with pytest.raises(ConnectFailed, match="not retried"):
        remote.connect()
    with socket.socket() as listener:  # something listens again (no SSH: the real attempt fails)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        time.sleep(0.6)
        with pytest.raises(ConnectFailed) as info:
            remote.connect()
        assert "not retried" not in str(info.value)


def test_a_host_that_accepts_but_never_answers_is_bounded_by_the_connect_timeout(
    tmp_path: Path,
) -> None:
    """A TCP peer that never speaks SSH (a hung sshd): the banner timeout, then dead."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        h = host(tmp_path, server.getsockname()[1], dead_after_s=30.0)
        h = h.model_copy(update={"ssh": h.ssh.model_copy(update={"connect_timeout_s": 1.0})})
        remote = Remote(h)
        started = time.monotonic()
        with pytest.raises(ConnectFailed):
            remote.run(["true"], timeout=5)
        assert time.monotonic() - started < 10
        assert remote.unreachable is not None
        with pytest.raises(ConnectFailed, match="not retried"):
            remote.read_text("/etc/hostname", timeout=5)
    finally:
        stop.set()
        thread.join(2)
        server.close()
        for s in accepted:
            s.close()


def test_the_transport_is_bounded_against_a_dead_peer() -> None:
    a, b = socket.socket(), socket.socket()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    a.connect(server.getsockname())
    b, _ = server.accept()
    transport = paramiko.Transport(a)
    try:
        _bound_transport(transport, keepalive_s=15, dead_after_s=30.0, open_timeout_s=10.0)
        assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30000
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert transport.channel_timeout == 20.0  # not paramiko's default hour
    finally:
        transport.close()
        b.close()
        server.close()
