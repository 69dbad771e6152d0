"""remote.py against the lab's real OpenSSH servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdevtest.errors import CommandFailed, CommandTimedOut, ConnectFailed
from mdevtest.remote import Remote
from mdevtest.testbed import Testbed


def test_run_returns_a_frozen_result(lab: Testbed) -> None:
    res = lab.remote("host-a").run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (res.host, res.rc, res.stdout, res.stderr) == ("host-a", 3, "out\n", "err\n")
    assert res.duration > 0
    with pytest.raises(AttributeError):
        res.rc = 0  # type: ignore[misc]


def test_commands_run_inside_the_host_namespace(lab: Testbed) -> None:
    out = lab.remote("host-b").check(["ip", "-o", "-4", "addr", "show", "dev", "mgmt0"]).stdout
    assert lab.inventory.host("host-b").address in out


def test_check_names_host_command_rc_and_stderr(lab: Testbed) -> None:
    with pytest.raises(CommandFailed) as exc:
        lab.remote("host-a").check(["ls", "/nonexistent-mdevtest"])
    msg = str(exc.value)
    assert msg.startswith("host-a:")
    assert "rc=2" in msg
    assert "ls /nonexistent-mdevtest" in msg
    assert "No such file" in msg


def test_timeout_is_enforced_and_the_connection_survives(lab: Testbed) -> None:
    remote = lab.remote("host-a")
    with pytest.raises(CommandTimedOut):
        remote.run(["sleep", "31.5"], timeout=1)
    assert remote.check(["echo", "still here"]).stdout == "still here\n"
    # ... and the host killed what we gave up on (within its own grace period).
    remote.check_shell(
        "for i in $(seq 100); do pgrep -f 'slee[p] 31.5' || exit 0; sleep 0.1; done; exit 1"
    )


HOSTILE = st.lists(
    st.sampled_from([*"ab $`'\";&|<>(){}*?!\\\n\t#~", "$(touch /tmp/pwned)", "; rm -rf /tmp/x"]),
    min_size=1,
    max_size=30,
).map("".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=HOSTILE)
def test_arguments_are_quoted_never_interpreted(lab: Testbed, value: str) -> None:
    out = lab.remote("host-a").check(["printf", "%s", value]).stdout
    assert out == value
    assert not Path("/tmp/pwned").exists()


def test_put_get_roundtrip(lab: Testbed, tmp_path: Path) -> None:
    remote = lab.remote("host-b")
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 100)
    target = f"{remote.host.state_dir}/roundtrip.bin"
    remote.put(src, target)
    back = tmp_path / "back"
    remote.get(target, back)
    remote.check(["rm", "-f", target])
    assert back.read_bytes() == src.read_bytes()


def test_unix_socket_bridge_reaches_a_socket_on_the_host(lab: Testbed) -> None:
    remote = lab.remote("host-a")
    path = f"{remote.host.state_dir}/echo.sock"
    remote.check_shell(
        f"rm -f {path}; setsid -f socat UNIX-LISTEN:{path},fork EXEC:cat </dev/null >/dev/null 2>&1"
    )
    try:
        remote.check_shell(f"for i in $(seq 50); do test -S {path} && exit 0; sleep 0.1; done; exit 1")
        with remote.open_unix_socket(path) as bridge:
            bridge.sock.settimeout(10)
            bridge.sock.sendall(b"ping over ssh\n")
            assert bridge.sock.recv(100) == b"ping over ssh\n"
    finally:
        remote.run_shell(f"pkill -f 'UNIX-LISTEN:{path}'; rm -f {path}")


def test_unknown_host_key_is_refused(lab: Testbed, tmp_path: Path) -> None:
    host = lab.inventory.host("host-a")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    stranger = host.model_copy(update={"ssh": host.ssh.model_copy(update={"known_hosts": empty})})
    with Remote(stranger) as remote, pytest.raises(ConnectFailed, match=r"not in .*known_hosts"):
        remote.run(["true"])


def test_wrong_host_key_is_refused(lab: Testbed, tmp_path: Path) -> None:
    a, b = lab.inventory.host("host-a"), lab.inventory.host("host-b")
    known = Path(str(a.ssh.known_hosts)).read_text().splitlines()
    b_key = next(line for line in known if line.startswith(b.address + " "))
    forged = tmp_path / "known_hosts"
    forged.write_text(b_key.replace(b.address, a.address, 1) + "\n")
    liar = a.model_copy(update={"ssh": a.ssh.model_copy(update={"known_hosts": forged})})
    with Remote(liar) as remote, pytest.raises(ConnectFailed, match="does not match"):
        remote.run(["true"])


def test_unreachable_host_fails_fast_with_the_address(lab: Testbed) -> None:
    host = lab.inventory.host("host-a")
    ghost = host.model_copy(
        update={"address": "198.18.0.99", "ssh": host.ssh.model_copy(update={"connect_timeout_s": 2})}
    )
    with Remote(ghost) as remote, pytest.raises(ConnectFailed, match=r"198\.18\.0\.99"):
        remote.run(["true"])
