"""Hostile inventories: whatever a user or a broken tool writes, loading ends quickly in one clear
message (exit 3 from the CLI, a usage error from pytest), never a hang, a memory blow-up or a
traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# imported here, not first inside an in-process pytester run: pytester drops what a run imported,
# and numpy (under the checks) cannot be imported twice in one process
import mdevtest.checks.standard  # noqa: F401
from mdevtest.cli import EXIT_INVENTORY
from mdevtest.errors import InventoryError
from mdevtest.inventory import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_PROBLEMS,
    MAX_SCALAR_CHARS,
    load_inventory,
    parse_inventory,
)

VALID = """\
version: 1
name: hostile-lab
hosts:
  - name: host-a
    address: 10.0.0.1
    ssh:
      key_file: keys/id_ed25519
  - name: host-b
    address: 10.0.0.2
    ssh:
      key_file: keys/id_ed25519
pairs:
  - source: host-a
    destination: host-b
    migration_address: 10.1.0.2
guest:
  image:
    kind: lab-synthetic
"""
KEY = "      key_file: keys/id_ed25519\n"


def edited(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def bomb(prefix: str = "", levels: int = 10, width: int = 9) -> str:
    """The "billion laughs": each anchored list repeats the previous one ``width`` times, so
    level ``levels - 1`` stands for width**levels strings. ``prefix`` indents the lines."""
    laughs = ", ".join(['"lol"'] * width)
    lines = [f"{prefix}lol0: &lol0 [{laughs}]"]
    for i in range(1, levels):
        repeats = ", ".join([f"*lol{i - 1}"] * width)
        lines.append(f"{prefix}lol{i}: &lol{i} [{repeats}]")
    return "\n".join(lines) + "\n"


# --- the corpus: (id, how to make the file, what the message must say) ------------------------

Maker = Callable[[Path], Path]


def text(content: str) -> Maker:
    def make(tmp: Path) -> Path:
        path = tmp / "lab.yaml"
        path.write_text(content)
        return path

    return make


def raw(content: bytes) -> Maker:
    def make(tmp: Path) -> Path:
        path = tmp / "lab.yaml"
        path.write_bytes(content)
        return path

    return make


def fifo(tmp: Path) -> Path:
    path = tmp / "lab.yaml"
    os.mkfifo(path)
    return path


def directory(tmp: Path) -> Path:
    path = tmp / "lab.yaml"
    path.mkdir()
    return path


def big_file(tmp: Path) -> Path:
    path = tmp / "lab.yaml"
    with path.open("w") as fh:
        fh.write(VALID)
        line = "# " + "x" * 1022 + "\n"
        fh.write(line * (5 * 1024))  # 5 MiB of comments: valid YAML, just far too much of it
    return path


def dev_zero(tmp: Path) -> Path:
    return Path("/dev/zero")


IMAGE_BOMB = edited(
    "    kind: lab-synthetic\n", "    kind: disk\n    path: disk.qcow2\n" + bomb(prefix="    ")
)

CORPUS: list[tuple[str, Maker, str]] = [
    ("alias-bomb", text(bomb() + VALID), "alias bomb"),
    ("alias-bomb-in-guest-image", text(IMAGE_BOMB), "alias bomb"),
    (
        "alias-bomb-as-guest-image",
        text(bomb() + edited("  image:\n    kind: lab-synthetic\n", "  image: *lol9\n")),
        "alias bomb",
    ),
    ("alias-cycle", text("name: &a [*a]\n"), "a cycle"),
    ("deep-flow", text("name: " + "[" * 1000 + "]" * 1000 + "\n"), "nested more than 50 levels"),
    ("deep-block", text("hosts:\n  " + "- " * 1000 + "x\n"), "nested more than 50 levels"),
    (
        "port-yes",
        text(edited(KEY, KEY + "      port: yes\n")),
        "hosts[0].ssh.port: 'yes' is not allowed: must be an integer between 1 and 65535",
    ),
    (
        "port-float",
        text(edited(KEY, KEY + "      port: 22.0\n")),
        "hosts[0].ssh.port: 22.0 is not allowed: must be an integer between 1 and 65535 "
        "(write 22, without a decimal point)",
    ),
    (
        "port-quoted",
        text(edited(KEY, KEY + '      port: "22"\n')),
        "hosts[0].ssh.port: '22' is not allowed: must be an integer between 1 and 65535 "
        "(write the number without quotes)",
    ),
    (
        "port-true",
        text(edited(KEY, KEY + "      port: true\n")),
        "hosts[0].ssh.port: true is not allowed: must be an integer",
    ),
    (
        "accept-quoted-yes",
        text(edited(KEY, KEY + '      accept_unknown_host_keys: "yes"\n')),
        "hosts[0].ssh.accept_unknown_host_keys: 'yes' is not allowed: must be true or false "
        "(write true or false, unquoted",
    ),
    (
        "accept-plain-on",
        text(edited(KEY, KEY + "      accept_unknown_host_keys: on\n")),
        "hosts[0].ssh.accept_unknown_host_keys: 'on' is not allowed: must be true or false",
    ),
    (
        "accept-one",
        text(edited(KEY, KEY + "      accept_unknown_host_keys: 1\n")),
        "hosts[0].ssh.accept_unknown_host_keys: 1 is not allowed: must be true or false",
    ),
    (
        "accept-quoted-true",
        text(edited(KEY, KEY + '      accept_unknown_host_keys: "true"\n')),
        "hosts[0].ssh.accept_unknown_host_keys: 'true' is not allowed: must be true or false",
    ),
    (
        "timeout-quoted",
        text(edited(KEY, KEY + '      connect_timeout_s: "10"\n')),
        "hosts[0].ssh.connect_timeout_s: '10' is not allowed: must be a finite number",
    ),
    ("version-true", text(edited("version: 1", "version: true")), "version: true is not allowed"),
    (
        "explicit-bad-int",
        text(edited(KEY, KEY + "      port: !!int twenty\n")),
        "'twenty' is not a valid int",
    ),
    (
        "nul-in-key-file",
        text(edited(KEY, '      key_file: "keys/\\0id_ed25519"\n')),
        "hosts[0].ssh.key_file: 'keys/\\x00id_ed25519' is not allowed: must not contain control "
        "characters",
    ),
    (
        "nul-in-remote-path",
        text(edited(KEY, KEY + '    state_dir: "/var/lib/\\0mdevtest"\n')),
        "hosts[0].state_dir: '/var/lib/\\x00mdevtest' is not allowed: must not contain control",
    ),
    (
        "escape-in-known-hosts",
        text(edited(KEY, KEY + '      known_hosts: "kh\\e[2J"\n')),
        "hosts[0].ssh.known_hosts",
    ),
    ("raw-nul-byte", raw(VALID.replace("hostile-lab", "hostile\0lab").encode()), "#x0000"),
    ("fifo", fifo, "is a FIFO (named pipe), not a regular file"),
    ("directory", directory, "is a directory, not a regular file"),
    ("dev-zero", dev_zero, "is a character device, not a regular file"),
    ("five-mib", big_file, f"an inventory is at most {MAX_FILE_BYTES // 1024} KiB"),
    (
        "100-kib-value",
        text(edited("name: hostile-lab", "name: " + "x" * 102400)),
        f"a value of 102400 characters; keys and values are limited to {MAX_SCALAR_CHARS}",
    ),
    (
        "100-kib-key",
        text(VALID + "? " + "y" * 102400 + "\n: 1\n"),  # an explicit key: no 1024 limit
        "a key of 102400 characters",
    ),
    (
        "huge-integer",
        text(edited(KEY, KEY + "      port: " + "9" * 300 + "\n")),
        "an integer of 300 characters is too large",
    ),
    (
        "huge-hex-integer",
        text(edited(KEY, KEY + "      port: 0x" + "f" * 4000 + "\n")),
        "is too large",
    ),
    ("non-utf8", raw(VALID.replace("hostile-lab", "hostile-\xe9").encode("latin-1")), "not UTF-8"),
    ("empty", text(""), "the file is empty"),
    ("top-level-list", text("- " + VALID.replace("\n", "\n  ")), "the top level is a list"),
    ("duplicate-key", text(VALID + "name: other\n"), "duplicate key 'name'"),
    (
        "many-problems",
        text(VALID + "".join(f"k{i}: 1\n" for i in range(3000))),
        "more problems (fix the ones above first)",
    ),
]
IDS = [case[0] for case in CORPUS]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path (a UNIX socket's path is limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mdt") as name:
        yield Path(name)


def check_message(message: str, expected: str, path: Path) -> None:
    __tracebackhide__ = True
    assert expected in message
    assert str(path) in message or path.name in message
    assert "Traceback" not in message
    assert "pydantic" not in message.lower()
    # every value is shortened: no line comes near the 100 KiB or 4000-digit inputs
    assert max(len(line) for line in message.splitlines()) < 600, message[:2000]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CORPUS], ids=IDS)
def test_load_inventory_refuses_it_with_an_inventory_error(
    tmp_path: Path, make: Maker, expected: str
) -> None:
    path = make(tmp_path)
    started = time.monotonic()
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert time.monotonic() - started < 5
    check_message(str(info.value), expected, path)
    assert 1 <= len(info.value.problems) <= MAX_PROBLEMS + 1


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CORPUS], ids=IDS)
def test_inventory_check_exits_3_quickly_with_one_message(
    tmp_path: Path, make: Maker, expected: str
) -> None:
    path = make(tmp_path)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mdevtest.cli", "inventory", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == EXIT_INVENTORY, proc.stderr[-2000:]
    assert elapsed < 5
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"mdevtest: invalid inventory {path}:\n")
    check_message(proc.stderr, expected, path)


def test_a_socket_is_refused(short_tmp: Path) -> None:
    path = short_tmp / "lab.yaml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(InventoryError) as info:
            load_inventory(path)
    assert "is a socket, not a regular file" in str(info.value)


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.yaml").write_text(VALID)
    (tmp_path / "lab.yaml").symlink_to("real.yaml")

    assert load_inventory(tmp_path / "lab.yaml").name == "hostile-lab"


def test_a_symlink_to_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "lab.yaml").symlink_to("pipe")

    with pytest.raises(InventoryError, match="is a FIFO"):
        load_inventory(tmp_path / "lab.yaml")


# --- what the bounds still allow ----------------------------------------------------------------


def test_aliases_within_the_bounds_still_work(tmp_path: Path) -> None:
    # the examples share a vgpu block between the two directions of a pair like this
    path = tmp_path / "lab.yaml"
    path.write_text(
        edited(
            "    migration_address: 10.1.0.2\n",
            "    migration_address: 10.1.0.2\n    vgpu: &gvt {vendor: gvt, type: i915-GVTg_V5_4}\n"
            "  - source: host-b\n    destination: host-a\n    migration_address: 10.1.0.1\n"
            "    vgpu: *gvt\n",
        )
    )

    inv = load_inventory(path)

    assert inv.pairs[0].vgpu is not None
    assert inv.pairs[0].vgpu == inv.pairs[1].vgpu


def test_a_merge_key_overridden_by_an_explicit_key(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        edited(
            "    ssh:\n      key_file: keys/id_ed25519\n  - name: host-b",
            "    ssh: &ssh\n      key_file: keys/id_ed25519\n      port: 2222\n  - name: host-b",
        ).replace(
            "    address: 10.0.0.2\n    ssh:\n      key_file: keys/id_ed25519\n",
            "    address: 10.0.0.2\n    ssh:\n      <<: *ssh\n      port: 2223\n",
        )
    )

    inv = load_inventory(path)

    assert [h.ssh.port for h in inv.hosts] == [2222, 2223]
    assert inv.hosts[0].ssh.key_file == inv.hosts[1].ssh.key_file


def test_the_node_bound_counts_alias_expansions_exactly(tmp_path: Path) -> None:
    # one list of n scalars repeated by m aliases: 1 + n nodes, then (1 + n) per alias
    n = 99
    within = (MAX_NODES - 200) // (n + 1)
    body = f"name: x\nbase: &b [{', '.join(['1'] * n)}]\nrep: [{', '.join(['*b'] * within)}]\n"
    path = tmp_path / "lab.yaml"
    path.write_text(body)
    with pytest.raises(InventoryError) as fine:
        load_inventory(path)
    assert "alias" not in str(fine.value)  # within the bound: only the schema complains

    path.write_text(body.replace("rep: [", "rep: [" + "*b, " * 3))
    with pytest.raises(InventoryError, match=f"more than {MAX_NODES} YAML nodes"):
        load_inventory(path)


def test_nesting_up_to_the_bound_is_only_a_schema_problem(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("name: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert "nested more than" not in str(info.value)
    assert "name:" in str(info.value)

    path.write_text("name: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n")
    with pytest.raises(InventoryError, match=f"nested more than {MAX_DEPTH} levels"):
        load_inventory(path)


def test_yaml_1_1_words_stay_text_where_text_is_wanted(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    yes_no = edited("name: hostile-lab", "name: no")
    path.write_text(
        yes_no.replace("    kind: lab-synthetic\n", "    kind: lab-synthetic\n  name: 2024-01-01\n")
    )

    inv = load_inventory(path)

    assert (inv.name, inv.guest.name) == ("no", "2024-01-01")


def test_real_booleans_and_integers_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        edited(KEY, KEY + "      port: 2222\n      accept_unknown_host_keys: true\n"
               "      connect_timeout_s: 5\n")
    )  # fmt: skip

    ssh = load_inventory(path).hosts[0].ssh

    assert (ssh.port, ssh.accept_unknown_host_keys, ssh.connect_timeout_s) == (2222, True, 5.0)


def test_parse_inventory_from_code_is_strict_too() -> None:
    import yaml

    data = yaml.safe_load(VALID)
    data["hosts"][0]["ssh"]["port"] = True
    data["guest"]["vcpus"] = 2.0
    data["hosts"][1]["ssh"]["accept_unknown_host_keys"] = "yes"

    with pytest.raises(InventoryError) as info:
        parse_inventory(data, source="code")

    message = str(info.value)
    assert "hosts[0].ssh.port: true is not allowed" in message
    assert "guest.vcpus: 2.0 is not allowed: must be an integer of at least 1" in message
    assert "hosts[1].ssh.accept_unknown_host_keys: 'yes' is not allowed" in message


def test_a_huge_int_given_in_code_is_shown_short() -> None:
    import yaml

    data = yaml.safe_load(VALID)
    data["hosts"][0]["ssh"]["port"] = 10**5000  # repr() of it would raise

    with pytest.raises(InventoryError, match="an integer of 16610 bits is not allowed"):
        parse_inventory(data, source="code")


# --- pytest --inventory -------------------------------------------------------------------------


def test_pytest_with_an_alias_bomb_inventory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    bad = pytester.path / "bomb.yaml"
    bad.write_text(bomb() + VALID)
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")

    started = time.monotonic()
    result = pytester.runpytest("--inventory", str(bad))

    assert time.monotonic() - started < 5
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err, out = result.stderr.str(), result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: invalid inventory {bad}:", "*alias bomb*"])
    assert "INTERNALERROR" not in out + err
    assert "Traceback" not in out + err


def test_pytest_with_a_fifo_inventory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    bad = pytester.path / "pipe.yaml"
    os.mkfifo(bad)
    pytester.makepyfile("def test_migrate(pair):\n    pass\n")

    result = pytester.runpytest_subprocess("--inventory", str(bad), timeout=20)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid inventory*pipe.yaml:", "*is a FIFO*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
