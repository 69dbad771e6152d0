"""Secrets only by reference, and never in an error, a log, an attachment or summary.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdevtest import credentials
from mdevtest.credentials import MASK, forget, mask, register, resolve
from mdevtest.errors import CommandFailed, InventoryError
from mdevtest.inventory import load_inventory
from mdevtest.remote import Remote
from mdevtest.report.summary import SummaryWriter

INVENTORY = """\
version: 1
name: secret-lab
hosts:
  - name: host-a
    address: 10.0.0.1
    ssh:
      key_file: /keys/id_ed25519
      key_passphrase: {passphrase}
  - name: host-b
    address: 10.0.0.2
    ssh:
      key_file: /keys/id_ed25519
pairs:
  - source: host-a
    destination: host-b
    migration_address: 10.1.0.2
guest:
  image:
    kind: lab-synthetic
"""


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """What a test registers is masked in every later test of the process: undo it."""
    before = set(credentials._values)
    yield
    for value in set(credentials._values) - before:
        forget(value)


PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


def _inventory(tmp_path: Path, passphrase: str) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(INVENTORY.format(passphrase=passphrase))
    return path


def test_an_inline_secret_is_refused_naming_the_field_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as bad:
        load_inventory(_inventory(tmp_path, "hunter2-inline"))
    text = str(bad.value)
    assert "hosts[0].ssh.key_passphrase" in text
    assert "{env: VARIABLE} or {file: /path}" in text
    assert "hunter2-inline" not in text  # the error does not repeat it


def test_a_reference_resolves_from_the_environment_and_is_masked_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDT_TEST_PASSPHRASE", "correct-horse-battery")
    inventory = load_inventory(_inventory(tmp_path, "{env: MDT_TEST_PASSPHRASE}"))
    ref = inventory.hosts[0].ssh.key_passphrase
    assert ref is not None
    assert "correct-horse-battery" not in inventory.model_dump_json()  # only the reference
    # the remote hands it to paramiko, and from then on it is masked everywhere
    kwargs = Remote(inventory.hosts[0])._new_connection().connect_kwargs
    assert kwargs["passphrase"] == "correct-horse-battery"
    error = CommandFailed("host-a", "echo correct-horse-battery", 1, "bad correct-horse-battery")
    assert "correct-horse-battery" not in str(error)
    assert MASK in str(error)


def test_a_file_reference_and_a_missing_one(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("file-secret-value\n")
    assert resolve(file=secret) == "file-secret-value"
    assert mask("token=file-secret-value") == f"token={MASK}"
    with pytest.raises(ValueError, match="MDT_NOT_SET_ANYWHERE is not set"):
        resolve(env="MDT_NOT_SET_ANYWHERE")
    with pytest.raises(ValueError, match="cannot read"):
        resolve(file=tmp_path / "missing")


def test_summary_json_masks_secrets_and_private_keys(tmp_path: Path) -> None:
    register("summary-secret-42")
    writer = SummaryWriter(tmp_path)
    writer.reset()
    register('quote"and\\slash')  # JSON escapes these: masked before dumping
    writer.add({"test_id": "t", "error": f"login summary-secret-42 failed; key {PEM}"})
    writer.add({"test_id": "u", "error": 'token quote"and\\slash'})
    path = writer.merge()
    assert path is not None
    text = path.read_text()
    assert "summary-secret-42" not in text
    assert "PRIVATE KEY" not in text
    errors = [m["error"] for m in json.loads(text)["migrations"]]
    assert errors == [f"login {MASK} failed; key [private key removed]", f"token {MASK}"]


@given(
    secret=st.text(min_size=4, max_size=40).filter(lambda s: s.strip() == s and s),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_a_registered_secret_never_survives_masking(secret: str, before: str, after: str) -> None:
    register(secret)
    try:
        assert secret not in mask(before + secret + after)
    finally:
        forget(secret)  # hypothesis runs many examples within one test
