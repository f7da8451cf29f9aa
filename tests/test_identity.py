"""Device identity: key files, certificate, and device IDs with check characters."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from syncd.deviceid import ALPHABET, InvalidDeviceId, format_device_id, luhn32, parse_device_id
from syncd.identity import (
    IdentityError,
    SharedDirectoryError,
    create_identity,
    device_id_from_certificate,
    ensure_private_dir,
    load_identity,
    load_or_create_identity,
)

SAMPLE = format_device_id(bytes(range(32)))


def test_format_is_eight_groups_of_seven() -> None:
    groups = SAMPLE.split("-")
    assert [len(g) for g in groups] == [7] * 8
    assert set(SAMPLE.replace("-", "")) <= set(ALPHABET)


def test_parse_round_trips_and_forgives_case_and_separators() -> None:
    assert parse_device_id(SAMPLE) == SAMPLE
    assert parse_device_id(SAMPLE.lower()) == SAMPLE
    assert parse_device_id(SAMPLE.replace("-", "")) == SAMPLE
    assert parse_device_id(" " + SAMPLE.replace("-", " ") + "\n") == SAMPLE


def test_every_single_character_typo_is_rejected() -> None:
    compact = SAMPLE.replace("-", "")
    for i in range(len(compact)):
        for c in ALPHABET:
            if c == compact[i]:
                continue
            typo = compact[:i] + c + compact[i + 1 :]
            with pytest.raises(InvalidDeviceId):
                parse_device_id(typo)


def test_luhn32_matches_syncthing_reference() -> None:
    # Syncthing's lib/protocol luhn test vector.
    assert luhn32("AB725E4GHIQPL3ZFGT") == "G"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected 56 characters"),
        ("ABC", "expected 56 characters"),
        (SAMPLE + "A", "expected 56 characters"),
        (SAMPLE.replace(SAMPLE[0], "1", 1), "not in the ID alphabet"),
        (SAMPLE.replace(SAMPLE[0], "!", 1), "not in the ID alphabet"),
    ],
)
def test_malformed_ids_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(InvalidDeviceId, match=fragment) as info:
        parse_device_id(text)
    assert info.value.reason == "invalid_device_id"


def test_swapped_check_character_is_rejected() -> None:
    compact = SAMPLE.replace("-", "")
    check = compact[13]
    other = ALPHABET[(ALPHABET.index(check) + 1) % 32]
    with pytest.raises(InvalidDeviceId, match="part 1"):
        parse_device_id(compact[:13] + other + compact[14:])


def test_create_identity_modes_and_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ident = create_identity(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(ident.key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
    assert device_id_from_certificate(cert) == ident.device_id
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == ident.device_id
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca
    assert parse_device_id(ident.device_id) == ident.device_id


def test_load_gives_the_same_id_and_reissues_a_missing_certificate(tmp_path: Path) -> None:
    ident = create_identity(tmp_path)
    assert load_identity(tmp_path).device_id == ident.device_id
    ident.cert_path.unlink()
    again = load_identity(tmp_path)
    assert again.device_id == ident.device_id
    assert again.cert_path.exists()


def test_load_or_create_creates_once(tmp_path: Path) -> None:
    first, created = load_or_create_identity(tmp_path / "s")
    second, created_again = load_or_create_identity(tmp_path / "s")
    assert created
    assert not created_again
    assert first.device_id == second.device_id


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    create_identity(tmp_path)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        create_identity(tmp_path)


def test_a_lost_key_is_not_silently_replaced(tmp_path: Path) -> None:
    ident = create_identity(tmp_path)
    cert = ident.cert_path.read_bytes()
    ident.key_path.unlink()
    with pytest.raises(IdentityError, match="identity is incomplete"):
        load_or_create_identity(tmp_path)
    assert ident.cert_path.read_bytes() == cert  # the old certificate is kept
    assert not ident.key_path.exists()
    ident.cert_path.unlink()  # the user's explicit choice: a new device
    assert load_or_create_identity(tmp_path)[1] is True


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    ident = create_identity(tmp_path)
    ident.key_path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(tmp_path)


def test_missing_and_garbage_keys_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="syncd init") as info:
        load_identity(tmp_path)
    assert info.value.reason == "no_identity"
    key = tmp_path / "key.pem"
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    with pytest.raises(IdentityError, match="not a valid private key") as info:
        load_identity(tmp_path)
    assert "restore it from a backup" in str(info.value)
    assert "http" not in str(info.value)  # no library internals in a user's error
    key.write_bytes(b"")
    with pytest.raises(IdentityError, match=r"key\.pem is empty"):
        load_identity(tmp_path)
    # A key that is gone while its certificate is there is not "no identity": it is lost.
    key.unlink()
    (tmp_path / "cert.pem").write_text("cert")
    with pytest.raises(IdentityError, match="identity is incomplete"):
        load_identity(tmp_path)


def test_a_shared_directory_is_not_made_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: `syncd --home /tmp` must not lock everyone out of it
    with pytest.raises(SharedDirectoryError, match="writable by every user"):
        ensure_private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    own = tmp_path / "own"
    own.mkdir()
    own.chmod(0o755)
    assert ensure_private_dir(own) == 0o755  # tightened, as documented, and said so
    assert stat.S_IMODE(own.stat().st_mode) == 0o700
    assert ensure_private_dir(own) is None
    assert ensure_private_dir(tmp_path / "new" / "dir") is None  # created private


@pytest.mark.parametrize("failing", ["key.pem", "cert.pem"])
def test_a_full_disk_during_creation_leaves_a_usable_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    real_write = os.write
    written: list[str] = []

    def write(fd: int, data: bytes | memoryview) -> int:
        name = os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[1]
        written.append(name)
        if name == failing + ".tmp":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr("syncd.identity.os.write", write)
    with pytest.raises(IdentityError, match=f"cannot write {tmp_path / failing}: No space left"):
        create_identity(tmp_path)
    assert written[0] == "key.pem.tmp"  # the key first: a certificate alone is a lost identity
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr("syncd.identity.os.write", real_write)  # space freed
    if failing == "key.pem":
        assert not list(tmp_path.iterdir())  # nothing half-made: init simply runs again
        created = create_identity(tmp_path)
    else:
        created = load_identity(tmp_path)  # the key is there; its certificate is re-issued
    assert load_identity(tmp_path).device_id == created.device_id
    assert (tmp_path / "cert.pem").exists()
