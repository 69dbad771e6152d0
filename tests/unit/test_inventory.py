"""The inventory loader: shipped files load, and bad input yields messages a user can act on."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mdevtest.errors import InventoryError
from mdevtest.inventory import (
    DiskImage,
    HostPair,
    Inventory,
    KernelImage,
    LabImage,
    describe,
    load_inventory,
    parse_inventory,
)

REPO = Path(__file__).resolve().parents[2]
LOCAL_LAB = REPO / "inventory" / "local-lab.yaml"
GPU_LAB = REPO / "inventory" / "examples" / "gvt-pair.yaml"

VALID = """\
version: 1
name: test-lab
hosts:
  - name: host-a
    address: 10.0.0.1
    ssh:
      key_file: keys/id_ed25519
  - name: host-b
    address: host-b.example.com
    ssh:
      key_file: /abs/id_ed25519
pairs:
  - source: host-a
    destination: host-b
    migration_address: 10.1.0.2
guest:
  image:
    kind: lab-synthetic
"""
PAIR_REST = "    destination: host-b\n    migration_address: 10.1.0.2\n"


def write(tmp_path: Path, text: str, name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> str:
    """Load ``path`` expecting failure; return the message a user would read."""
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert path.name in message
    assert "pydantic" not in message.lower()
    assert "errors.pydantic.dev" not in message
    assert "Traceback" not in message
    return message


def edited(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


# --- shipped files ------------------------------------------------------------------------


def test_local_lab_inventory_loads_with_the_fixed_lab_values() -> None:
    inv = load_inventory(LOCAL_LAB)

    assert [h.name for h in inv.hosts] == ["host-a", "host-b"]
    assert [h.address for h in inv.hosts] == ["198.18.0.11", "198.18.0.12"]
    assert [p.id for p in inv.pairs] == ["host-a->host-b", "host-b->host-a"]
    assert [p.migration_address for p in inv.pairs] == ["198.18.1.12", "198.18.1.11"]
    assert inv.local_lab is not None
    assert inv.local_lab.state_dir == Path("/var/lib/mdevtest/local-lab")
    a = inv.host("host-a")
    assert a.ssh.user == "root"
    assert a.ssh.port == 22
    assert a.ssh.key_file == Path("/var/lib/mdevtest/local-lab/ssh/id_ed25519")
    assert a.ssh.known_hosts == Path("/var/lib/mdevtest/local-lab/ssh/known_hosts")
    assert a.ssh.accept_unknown_host_keys is False
    assert a.state_dir == "/var/lib/mdevtest/local-lab/hosts/host-a"
    assert a.qemu_binary == "/usr/bin/qemu-system-x86_64"
    assert isinstance(inv.guest.image, LabImage)
    assert (inv.guest.memory_mib, inv.guest.vcpus) == (256, 1)
    assert inv.limits.downtime_ms == 500
    assert inv.limits.total_time_s == 10
    assert inv.source_path == LOCAL_LAB


def test_gpu_lab_example_loads_without_its_key_files_existing() -> None:
    inv = load_inventory(GPU_LAB)

    assert len(inv.hosts) == 2
    for pair in inv.pairs:
        assert pair.vgpu is not None
        assert (pair.vgpu.vendor, pair.vgpu.type) == ("gvt", "i915-GVTg_V5_4")
        assert pair.vgpu.parent == "0000:00:02.0"
        assert pair.migration_address != inv.host(pair.destination).address
    assert isinstance(inv.guest.image, KernelImage)
    assert inv.guest.image.kernel.is_absolute()
    assert (inv.guest.memory_mib, inv.guest.vcpus) == (2048, 2)
    assert (inv.limits.downtime_ms, inv.limits.total_time_s) == (500, 3)
    assert inv.local_lab is None
    assert not inv.host(inv.hosts[0].name).ssh.key_file.exists()


@pytest.mark.parametrize("path", [LOCAL_LAB, GPU_LAB], ids=["local-lab", "gpu-lab"])
def test_describe_mentions_every_host_and_pair(path: Path) -> None:
    inv = load_inventory(path)

    text = describe(inv)

    assert inv.name in text
    assert str(path) in text
    for host in inv.hosts:
        assert host.name in text
        assert f"{host.ssh.user}@{host.address}:{host.ssh.port}" in text
        assert host.state_dir in text
    for pair in inv.pairs:
        assert pair.id in text
        assert f"{pair.migration_address}:{pair.migration_port}" in text
    assert f"{inv.limits.downtime_ms:g} ms" in text


def test_describe_shows_vgpu_and_brackets_ipv6(tmp_path: Path) -> None:
    text = edited(
        "    migration_address: 10.1.0.2\n",
        "    migration_address: fd00::2\n    vgpu: {vendor: mtty, type: mtty-2}\n",
    )
    inv = load_inventory(write(tmp_path, text))

    shown = describe(inv)

    assert "[fd00::2]:4444" in shown
    assert "mtty mtty-2 on any parent" in shown


# --- the model ----------------------------------------------------------------------------


def test_valid_inventory_gets_defaults(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, VALID))

    ssh = inv.host("host-a").ssh
    assert (ssh.user, ssh.port, ssh.known_hosts, ssh.keepalive_s) == ("root", 22, None, 15)
    assert inv.host("host-a").accel == "auto"
    assert inv.pairs[0].migration_port == 4444
    assert inv.pairs[0].vgpu is None
    assert (inv.limits.downtime_ms, inv.limits.migration_timeout_s) == (500, 120)


def test_relative_paths_resolve_against_the_inventory_directory(tmp_path: Path) -> None:
    text = edited(
        "      key_file: keys/id_ed25519\n",
        "      key_file: keys/id_ed25519\n      known_hosts: ../kh\n",
    )
    text = text.replace("    kind: lab-synthetic\n", "    kind: disk\n    path: images/guest.qcow2\n")
    text += "local_lab:\n  state_dir: state\n"
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", text)

    inv = load_inventory(path)

    ssh = inv.host("host-a").ssh
    assert ssh.key_file == tmp_path / "sub" / "keys" / "id_ed25519"
    assert ssh.known_hosts == tmp_path / "kh"
    assert inv.host("host-b").ssh.key_file == Path("/abs/id_ed25519")
    assert isinstance(inv.guest.image, DiskImage)
    assert inv.guest.image.path == tmp_path / "sub" / "images" / "guest.qcow2"
    assert inv.local_lab is not None
    assert inv.local_lab.state_dir == tmp_path / "sub" / "state"


def test_relative_path_given_to_the_loader_still_yields_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)

    inv = load_inventory("lab.yaml")

    assert inv.source_path == tmp_path / "lab.yaml"
    assert inv.host("host-a").ssh.key_file == tmp_path / "keys" / "id_ed25519"


def test_models_are_frozen(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, VALID))

    with pytest.raises(pydantic.ValidationError, match="frozen"):
        inv.name = "other"
    with pytest.raises(pydantic.ValidationError):
        inv.hosts[0].ssh.port = 2222
    with pytest.raises(pydantic.ValidationError):
        inv.pairs[0].migration_port = 1


def test_host_pair_id_is_source_arrow_destination() -> None:
    pair = HostPair(source="host-a", destination="host-b", migration_address="10.0.0.2")

    assert pair.id == "host-a->host-b"


def test_source_path_is_not_dumped_and_not_accepted_from_yaml(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, VALID))
    assert "source_path" not in inv.model_dump()

    message = problems_of(write(tmp_path, VALID + "source_path: /etc/passwd\n", "sp.yaml"))

    assert "source_path: unknown key" in message


def test_host_lookup_of_unknown_name_lists_known_hosts(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, VALID))

    with pytest.raises(InventoryError) as info:
        inv.host("host-c")

    assert "no host named 'host-c'; known hosts: host-a, host-b" in str(info.value)


def test_pair_lookup_by_id(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, VALID))

    assert inv.pair("host-a->host-b") is inv.pairs[0]
    with pytest.raises(InventoryError, match="known pairs: host-a->host-b"):
        inv.pair("host-b->host-a")


MINIMAL: dict[str, object] = {
    "name": "x",
    "hosts": [{"name": "a", "address": "10.0.0.1", "ssh": {"key_file": "/k"}}],
    "pairs": [{"source": "a", "destination": "b", "migration_address": "10.0.0.2"}],
    "guest": {"image": {"kind": "lab-synthetic"}},
}


def test_building_an_inventory_in_code_checks_references_too() -> None:
    with pytest.raises(pydantic.ValidationError, match="'b' is not a host of this inventory"):
        Inventory.model_validate(MINIMAL)


def test_parse_inventory_names_the_source_it_was_given() -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(MINIMAL, source="generated by lab up")

    assert str(info.value).startswith("invalid inventory generated by lab up:")
    assert info.value.problems == (
        "pairs[0].destination: 'b' is not a host of this inventory; known hosts: a",
    )


# --- field errors -------------------------------------------------------------------------


def test_wrong_type_names_the_field_and_what_is_allowed(tmp_path: Path) -> None:
    text = edited(
        "      key_file: /abs/id_ed25519\n", "      key_file: /abs/id_ed25519\n      port: abc\n"
    )

    message = problems_of(write(tmp_path, text))

    assert "hosts[1].ssh.port: 'abc' is not allowed: must be an integer between 1 and 65535" in message


def test_out_of_range_port(tmp_path: Path) -> None:
    text = edited(
        "      key_file: /abs/id_ed25519\n", "      key_file: /abs/id_ed25519\n      port: 70000\n"
    )

    message = problems_of(write(tmp_path, text))

    assert "hosts[1].ssh.port: 70000 is not allowed: must be an integer between 1 and 65535" in message


def test_unknown_key_with_a_close_match_suggests_it(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, edited("    address: 10.0.0.1", "    adress: 10.0.0.1")))

    assert "hosts[0].adress: unknown key; did you mean 'address'?" in message
    assert "hosts[0].address: missing (required)" in message


def test_unknown_key_without_a_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    text = VALID + "limits:\n  wibble: 3\n"

    message = problems_of(write(tmp_path, text))

    assert (
        "limits.wibble: unknown key; allowed keys: downtime_ms, total_time_s, migration_timeout_s"
        in message
    )


def test_key_at_the_wrong_level_points_to_where_it_belongs(tmp_path: Path) -> None:
    message = problems_of(
        write(tmp_path, edited("    address: 10.0.0.1\n", "    address: 10.0.0.1\n    port: 22\n"))
    )

    assert "hosts[0].port: unknown key; did you mean to put it under 'ssh' (ssh.port)?" in message


def test_missing_required_field(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, edited("    migration_address: 10.1.0.2\n", "")))

    assert "pairs[0].migration_address: missing (required)" in message


def test_missing_top_level_section(tmp_path: Path) -> None:
    text = VALID[: VALID.index("guest:")]

    message = problems_of(write(tmp_path, text))

    assert "guest: missing (required)" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = edited("    address: 10.0.0.1", "    adress: 10.0.0.1")
    text = text.replace("destination: host-b", "destination: host-c")
    text = text.replace("kind: lab-synthetic", "kind: iso")

    with pytest.raises(InventoryError) as info:
        load_inventory(write(tmp_path, text))

    paths = [p.split(":", 1)[0] for p in info.value.problems]
    assert {
        "hosts[0].adress",
        "hosts[0].address",
        "pairs[0].destination",
        "guest.image.kind",
    } <= set(paths)


def test_bad_discriminator_lists_the_image_kinds(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, edited("kind: lab-synthetic", "kind: iso")))

    assert (
        "guest.image.kind: 'iso' is not allowed: must be one of "
        "'lab-synthetic', 'lab-mtty', 'lab-mtty-uefi', 'lab-desktop', 'kernel', 'disk'" in message
    )


def test_errors_inside_an_image_kind_have_no_tag_in_the_path(tmp_path: Path) -> None:
    text = edited("    kind: lab-synthetic\n", "    kind: kernel\n    kernle: vmlinuz\n")

    message = problems_of(write(tmp_path, text))

    assert "guest.image.kernle: unknown key; did you mean 'kernel'?" in message
    assert "guest.image.initrd: missing (required)" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("name: host-b", "name: Host_B", "hosts[1].name: 'Host_B' is not allowed: must be 1-63"),
        (
            "address: 10.0.0.1",
            "address: root@10.0.0.1",
            "hosts[0].address: 'root@10.0.0.1' is not allowed: must be an IPv4/IPv6 address",
        ),
        ("name: test-lab", "name: ''", "name: '' is not allowed: must be a non-empty string"),
        ("version: 1", "version: 2", "version: 2 is not allowed: must be 1"),
        (
            "pairs:\n  - source: host-a\n" + PAIR_REST,
            "pairs: []\n",
            "pairs: an empty list is not allowed: must be a list with at least 1 entry",
        ),
        (
            "guest:\n",
            "guest:\n  vcpus: 0\n",
            "guest.vcpus: 0 is not allowed: must be an integer of at least 1",
        ),
    ],
)
def test_value_rules(tmp_path: Path, old: str, new: str, expected: str) -> None:
    message = problems_of(write(tmp_path, edited(old, new)))

    assert expected in message


def test_remote_state_dir_must_be_absolute(tmp_path: Path) -> None:
    text = edited("    address: 10.0.0.1\n", "    address: 10.0.0.1\n    state_dir: var/lib\n")

    message = problems_of(write(tmp_path, text))

    assert "hosts[0].state_dir: 'var/lib' is not allowed: must be an absolute path" in message


def test_unquoted_text_that_yaml_reads_as_a_number_gets_a_hint(tmp_path: Path) -> None:
    text = edited("    address: 10.0.0.1\n", "    address: 10.0.0.1\n    qemu_binary: 1.10\n")

    message = problems_of(write(tmp_path, text))

    assert "hosts[0].qemu_binary: 1.1 is not allowed" in message
    assert "put it in quotes" in message


def test_unquoted_pci_address_stays_a_string(tmp_path: Path) -> None:
    # Plain YAML 1.1 would read 0000:00:02.0 as the base-60 float 2.0.
    text = edited(
        "    migration_address: 10.1.0.2\n",
        "    migration_address: 10.1.0.2\n"
        "    vgpu: {vendor: gvt, type: i915-GVTg_V5_4, parent: 0000:00:02.0}\n",
    )

    inv = load_inventory(write(tmp_path, text))

    assert inv.pairs[0].vgpu is not None
    assert inv.pairs[0].vgpu.parent == "0000:00:02.0"


def vf_pair(vgpu: str) -> str:
    return edited(
        "    migration_address: 10.1.0.2\n", f"    migration_address: 10.1.0.2\n    vgpu: {vgpu}\n"
    )


def test_an_sriov_vf_vgpu_takes_the_pf_and_a_vf_count(tmp_path: Path) -> None:
    inv = load_inventory(
        write(tmp_path, vf_pair("{vendor: xe-sriov, type: auto, parent: 0000:03:00.0, vfs: 4}"))
    )
    vgpu = inv.pairs[0].vgpu
    assert vgpu is not None
    assert (vgpu.is_vf, vgpu.parent, vgpu.vfs) == (True, "0000:03:00.0", 4)


@pytest.mark.parametrize(
    ("vgpu", "says"),
    [
        ("{vendor: xe-sriov, type: auto}", "set parent to the PF's PCI address"),
        ("{vendor: nvidia-vfio, type: '1156', parent: '03:00.0'}", "set parent to the PF's PCI"),
        ("{vendor: gvt, type: i915-GVTg_V5_4, vfs: 2}", "gvt creates mdevs: remove vfs"),
        (
            "{vendor: xe-sriov, type: auto, parent: 0000:03:00.0, use_mdevctl: true}",
            "uses VFs, not mdevs: remove use_mdevctl",
        ),
        ("{vendor: xe-sriov, type: auto, parent: 0000:03:00.0, vfs: 0}", "vfs"),
    ],
)
def test_bad_vf_combinations_say_what_to_change(tmp_path: Path, vgpu: str, says: str) -> None:
    message = problems_of(write(tmp_path, vf_pair(vgpu)))
    assert "pairs[0].vgpu" in message
    assert says in message


# --- references between hosts and pairs ---------------------------------------------------


def test_pair_referencing_a_missing_host(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, edited("destination: host-b", "destination: host-c")))

    assert (
        "pairs[0].destination: 'host-c' is not a host of this inventory; "
        "known hosts: host-a, host-b" in message
    )


def test_pair_with_source_equal_to_destination(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, edited("destination: host-b", "destination: host-a")))

    assert "pairs[0].destination: 'host-a' is also the source" in message


def test_duplicate_host_names(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, edited("name: host-b", "name: host-a")))

    assert "hosts[1].name: 'host-a' is already used by hosts[0]" in message


def test_duplicate_pairs(tmp_path: Path) -> None:
    pair = "  - source: host-a\n    destination: host-b\n    migration_address: 10.1.0.2\n"
    text = edited(pair, pair + pair)

    message = problems_of(write(tmp_path, text))

    assert "pairs[1]: host-a->host-b is already listed as pairs[0]" in message


def test_reference_problem_is_reported_once(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as info:
        load_inventory(write(tmp_path, edited("destination: host-b", "destination: host-c")))

    assert len(info.value.problems) == 1


# --- file-level problems ------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = "name: x\nhosts:\n  - name: a\n   address: b\n"

    message = problems_of(write(tmp_path, text))

    assert "YAML syntax error at line 4" in message


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, VALID + "name: other\n"))

    assert "duplicate key 'name' (first defined on line 2)" in message


def test_empty_file(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, ""))

    assert "the file is empty" in message
    assert "version, name, hosts, pairs, guest" in message


def test_top_level_list(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "- name: host-a\n"))

    assert "the top level is a list; expected a mapping" in message


def test_missing_file(tmp_path: Path) -> None:
    message = problems_of(tmp_path / "nope.yaml")

    assert "file not found" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()

    message = problems_of(tmp_path / "dir.yaml")

    assert "is a directory" in message


def test_problems_are_one_line_each_and_keep_the_path(tmp_path: Path) -> None:
    text = edited("    address: 10.0.0.1", "    adress: 10.0.0.1").replace("host-b", "Host_B")

    with pytest.raises(InventoryError) as info:
        load_inventory(write(tmp_path, text))

    assert info.value.path.endswith("lab.yaml")
    assert len(info.value.problems) >= 3
    assert all("\n" not in p for p in info.value.problems)


# --- any damage to a valid file is reported as an InventoryError ---------------------------


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


_GPU_LAB_DATA = yaml.safe_load(GPU_LAB.read_text())
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(_paths(_GPU_LAB_DATA)[1:]), _VALUES, st.booleans()), max_size=3
    )
)
def test_damaged_inventory_yields_inventory_error_and_nothing_else(
    edits: list[tuple[tuple[object, ...], object, bool]],
) -> None:
    data = copy.deepcopy(_GPU_LAB_DATA)
    for path, value, delete in edits:
        parent: Any = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            if delete and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced this branch

    problems: tuple[str, ...] | None = None
    try:
        parse_inventory(data, source="damaged.yaml", base_dir="/lab")
    except InventoryError as exc:
        problems = exc.problems
    if problems is not None:  # damaged beyond validity: must still be a clean report
        assert problems
        assert not any("pydantic" in p.lower() for p in problems)
