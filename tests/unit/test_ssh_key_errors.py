"""SSH key problems say which problem it is, with real key files and no server: a missing file is
not an unreachable host, and a wrong passphrase, a missing one, a public key and garbage each get
their own message."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mdevtest import credentials
from mdevtest.errors import INFRASTRUCTURE, ConnectFailed, KeyFileError, classify
from mdevtest.inventory import Host
from mdevtest.remote import Remote, load_private_key

PASSPHRASE = "correct horse battery"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """Resolving a passphrase registers it for masking in this process: undo that."""
    before = set(credentials._values)
    yield
    for value in set(credentials._values) - before:
        credentials.forget(value)


def write_key(
    path: Path,
    key: PrivateKey,
    fmt: serialization.PrivateFormat,
    passphrase: str | None = PASSPHRASE,
) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase is not None
        else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    path.chmod(0o600)
    return path


def openssh_ed25519() -> PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def rsa_2048() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ecdsa_p256() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


KINDS: list[tuple[str, Callable[[], PrivateKey], serialization.PrivateFormat]] = [
    ("openssh-ed25519", openssh_ed25519, serialization.PrivateFormat.OpenSSH),
    ("openssh-rsa", rsa_2048, serialization.PrivateFormat.OpenSSH),
    ("pem-rsa", rsa_2048, serialization.PrivateFormat.TraditionalOpenSSL),
    ("pkcs8-ecdsa", ecdsa_p256, serialization.PrivateFormat.PKCS8),
]


def public_b64(key: PrivateKey) -> str:
    blob = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return blob.decode().split()[1]


# --- load_private_key -----------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "fmt"), [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_an_encrypted_key_loads_with_its_passphrase(
    tmp_path: Path, make: Callable[[], PrivateKey], fmt: serialization.PrivateFormat
) -> None:
    key = make()
    path = write_key(tmp_path / "id", key, fmt)

    loaded = load_private_key(path, PASSPHRASE)

    assert isinstance(loaded, paramiko.PKey)
    assert loaded.can_sign()
    assert loaded.get_base64() == public_b64(key)


@pytest.mark.parametrize(("make", "fmt"), [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_a_wrong_passphrase_says_so_naming_the_key(
    tmp_path: Path, make: Callable[[], PrivateKey], fmt: serialization.PrivateFormat
) -> None:
    path = write_key(tmp_path / "id", make(), fmt)

    with pytest.raises(KeyFileError) as info:
        load_private_key(path, "Tr0ub4dor&3")

    assert str(info.value).startswith(f"the passphrase is wrong for key {path}:")
    assert "ssh.key_passphrase" in str(info.value)
    assert info.value.path == str(path)


@pytest.mark.parametrize(("make", "fmt"), [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_an_encrypted_key_without_a_passphrase_says_to_give_one(
    tmp_path: Path, make: Callable[[], PrivateKey], fmt: serialization.PrivateFormat
) -> None:
    path = write_key(tmp_path / "id", make(), fmt)

    with pytest.raises(KeyFileError) as info:
        load_private_key(path, None)

    assert f"key file {path} is encrypted and no passphrase was given" in str(info.value)
    assert "ssh.key_passphrase" in str(info.value)


def test_a_passphrase_for_an_unencrypted_key_is_ignored(tmp_path: Path) -> None:
    key = openssh_ed25519()
    path = write_key(tmp_path / "id", key, serialization.PrivateFormat.OpenSSH, passphrase=None)

    assert load_private_key(path, "not needed").get_base64() == public_b64(key)
    assert load_private_key(path).get_base64() == public_b64(key)


def test_a_missing_key_file_says_it_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "id_ed25519"

    with pytest.raises(KeyFileError) as info:
        load_private_key(path, None)

    assert str(info.value).startswith(f"key file {path} does not exist; check ssh.key_file")


def test_a_public_key_given_as_key_file_says_so(tmp_path: Path) -> None:
    key = openssh_ed25519()
    path = tmp_path / "id_ed25519.pub"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b" me@controller\n"
    )

    with pytest.raises(KeyFileError, match=r"is a public key; ssh.key_file names the private key"):
        load_private_key(path, None)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        os.urandom(512),
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        b"-----END OPENSSH PRIVATE KEY-----\n",
        b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n",
    ],
    ids=["empty", "text", "random-bytes", "truncated-openssh", "truncated-pem"],
)
@pytest.mark.parametrize("passphrase", [None, PASSPHRASE])
def test_a_file_that_is_no_private_key_says_it_cannot_be_read(
    tmp_path: Path, content: bytes, passphrase: str | None
) -> None:
    path = tmp_path / "id"
    path.write_bytes(content)

    with pytest.raises(KeyFileError) as info:
        load_private_key(path, passphrase)

    assert str(info.value).startswith(f"key file {path} is not a private key mdevtest can read")
    assert "Ed25519, ECDSA or RSA" in str(info.value)


def test_a_directory_as_key_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"is a directory; ssh.key_file names the private key"):
        load_private_key(tmp_path, None)


def test_a_fifo_as_key_file_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "id")

    with pytest.raises(KeyFileError, match="is not a regular file"):
        load_private_key(tmp_path / "id", None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_key_file_says_permission_denied(tmp_path: Path) -> None:
    path = write_key(tmp_path / "id", openssh_ed25519(), serialization.PrivateFormat.OpenSSH)
    path.chmod(0)

    with pytest.raises(KeyFileError, match=f"cannot read key file {path}: permission denied"):
        load_private_key(path, PASSPHRASE)


def test_a_permission_error_reads_as_permission_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same translation, also where the tests run as root
    path = write_key(tmp_path / "id", openssh_ed25519(), serialization.PrivateFormat.OpenSSH)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("mdevtest.remote.open", refuse, raising=False)
    with pytest.raises(KeyFileError, match=f"cannot read key file {path}: permission denied"):
        load_private_key(path, PASSPHRASE)


def test_key_file_errors_are_infrastructure_failures(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        load_private_key(tmp_path / "missing", None)

    assert classify(info.value) == INFRASTRUCTURE


def test_messages_carry_neither_the_passphrase_nor_key_material(tmp_path: Path) -> None:
    path = write_key(tmp_path / "id", rsa_2048(), serialization.PrivateFormat.TraditionalOpenSSL)
    pem = path.read_text()

    with pytest.raises(KeyFileError) as info:
        load_private_key(path, PASSPHRASE + "!")

    assert PASSPHRASE not in str(info.value)
    assert pem.splitlines()[-2] not in str(info.value)  # a line of the key's body


# --- Remote.connect: the key is loaded first, so its problem is not reported as the host's ------


def host(key_file: Path, *, passphrase_env: str | None = None) -> Host:
    ssh: dict[str, object] = {"key_file": str(key_file), "port": 1, "connect_timeout_s": 5}
    if passphrase_env is not None:
        ssh["key_passphrase"] = {"env": passphrase_env}
    # 127.0.0.1:1 refuses at once: reaching the network would read "cannot reach"
    return Host.model_validate({"name": "host-a", "address": "127.0.0.1", "ssh": ssh})


def test_connect_with_a_missing_key_names_the_key_not_the_host(tmp_path: Path) -> None:
    missing = tmp_path / "id_ed25519"

    with pytest.raises(ConnectFailed) as info:
        Remote(host(missing)).connect()

    message = str(info.value)
    assert message.startswith(f"host-a: key file {missing} does not exist")
    assert "cannot reach" not in message
    assert isinstance(info.value.__cause__, KeyFileError)


def test_connect_with_a_wrong_passphrase_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_key(tmp_path / "id", openssh_ed25519(), serialization.PrivateFormat.OpenSSH)
    monkeypatch.setenv("MDT_TEST_KEY_PASSPHRASE", "wrong passphrase")

    with pytest.raises(ConnectFailed) as info:
        Remote(host(path, passphrase_env="MDT_TEST_KEY_PASSPHRASE")).connect()

    assert str(info.value).startswith(f"host-a: the passphrase is wrong for key {path}")
    assert "wrong passphrase" not in str(info.value)  # masked once resolved


def test_connect_with_a_good_key_goes_on_to_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = openssh_ed25519()
    path = write_key(tmp_path / "id", key, serialization.PrivateFormat.OpenSSH)
    monkeypatch.setenv("MDT_TEST_KEY_PASSPHRASE", PASSPHRASE)
    remote = Remote(host(path, passphrase_env="MDT_TEST_KEY_PASSPHRASE"))

    kwargs = remote._new_connection(remote._private_key()).connect_kwargs
    assert kwargs["pkey"].get_base64() == public_b64(key)
    assert "key_filename" not in kwargs
    assert "passphrase" not in kwargs  # the key is already decrypted
    with pytest.raises(ConnectFailed, match=r"host-a: cannot reach root@127\.0\.0\.1:1 "):
        remote.connect()
