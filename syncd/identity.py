"""Device identity: the device's key, its self-signed certificate, and its device ID.

The device ID is the SHA-256 of the device's public key (its DER ``SubjectPublicKeyInfo``),
printed with check characters (:mod:`syncd.deviceid`). Deriving the ID from the public key (not
from the certificate) lets a certificate be re-issued without changing the device's identity;
the certificate's subject CN is the ID.

The private key file is written with mode 0600 in a directory of mode 0700.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from syncd.deviceid import format_device_id
from syncd.errors import SyncdError

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"


class IdentityError(SyncdError):
    """The identity files are missing, unreadable or unsafe."""

    reason = "identity"


def device_id_from_public_key(public_key: ed25519.Ed25519PublicKey) -> str:
    """The device ID of a public key: SHA-256 of its DER SubjectPublicKeyInfo, formatted."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return format_device_id(hashlib.sha256(der).digest())


def device_id_from_certificate(cert: x509.Certificate) -> str:
    """The device ID of whoever holds the certificate's private key."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return format_device_id(hashlib.sha256(der).digest())


@dataclass(frozen=True)
class Identity:
    """This device's key pair, certificate and ID."""

    device_id: str
    private_key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate
    key_path: Path
    cert_path: Path
    certificate_reissued: bool = False
    """Loading made a new certificate from the key (the file was missing or was another
    key's): callers say so."""

    def certificate_pem(self) -> bytes:
        """The certificate in PEM form."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def make_certificate(
    key: ed25519.Ed25519PrivateKey, *, now: datetime.datetime | None = None
) -> x509.Certificate:
    """A self-signed certificate for ``key``: subject CN = device ID, critical CA:FALSE."""
    device_id = device_id_from_public_key(key.public_key())
    now = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "syncd"),
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * 30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("syncd")]), critical=False)
    )
    return builder.sign(key, algorithm=None)


def write_file_durably(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``, durably (fsync file and directory).

    On failure (a full disk) nothing is left behind: ``path`` is untouched and the temporary
    file is removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


class SharedDirectoryError(OSError):
    """A directory that others may write to (such as ``/tmp``): not one to make private."""


def ensure_private_dir(path: Path) -> int | None:
    """Create ``path`` (and parents) if missing and make sure it has mode 0700; returns the
    mode an existing directory had if it was changed (None otherwise), for the caller to say.

    An existing directory that anyone may write to (world-writable or sticky, like ``/tmp``)
    is refused with :class:`SharedDirectoryError` rather than made private: that would lock
    everyone else out of it (and anyone could have made it).
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_ISVTX | stat.S_IWOTH):
        raise SharedDirectoryError(
            f"{path} is writable by every user (mode {mode:04o}), so syncd will not keep its "
            "files there: if it is yours alone, `chmod 700` it; otherwise give syncd a "
            "directory of its own"
        )
    if mode == 0o700:
        return None
    os.chmod(path, 0o700)
    return mode


def identity_exists(state_dir: Path) -> bool:
    """Whether ``state_dir`` holds a private key."""
    return (state_dir / KEY_FILE).exists()


def create_identity(state_dir: Path) -> Identity:
    """Create a new key and certificate in ``state_dir`` (which becomes mode 0700)."""
    ensure_private_dir(state_dir)
    key_path, cert_path = state_dir / KEY_FILE, state_dir / CERT_FILE
    if key_path.exists():
        raise IdentityError(f"{key_path} already exists; refusing to overwrite an identity")
    if cert_path.exists():
        # The certificate of an identity whose key is gone: a new key would silently become a
        # new device (peers would no longer recognise this one), and overwrite the certificate.
        raise _incomplete(key_path, cert_path)
    key = ed25519.Ed25519PrivateKey.generate()
    cert = make_certificate(key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key first: a key without its certificate is completed at the next load, while a
    # certificate without its key is an identity lost (see _incomplete).
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Identity(device_id_from_public_key(key.public_key()), key, cert, key_path, cert_path)


def load_identity(state_dir: Path) -> Identity:
    """Load the identity from ``state_dir``; re-issue the certificate if it is missing.

    Refuses a private key that other users can read (like ssh does).
    """
    key_path, cert_path = state_dir / KEY_FILE, state_dir / CERT_FILE
    try:
        st = key_path.stat()
        key_pem = key_path.read_bytes()
    except FileNotFoundError:
        if cert_path.exists():
            raise _incomplete(key_path, cert_path) from None
        raise IdentityError(
            f"no identity in {state_dir} (run `syncd init` first)", reason="no_identity"
        ) from None
    except OSError as exc:
        raise IdentityError(f"cannot read {key_path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise IdentityError(
            f"{key_path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {key_path}"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        what = "is empty" if not key_pem.strip() else "is not a valid private key (damaged?)"
        raise IdentityError(
            f"{key_path} {what}: restore it from a backup; only if there is none, move it and "
            f"{CERT_FILE} away to start as a new device (a new device ID that peers must "
            "trust again)"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{key_path} is not an Ed25519 private key")
    device_id = device_id_from_public_key(key.public_key())
    cert: x509.Certificate | None = None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        cert = None
    except ValueError as exc:
        raise IdentityError(f"{cert_path} is not a valid certificate: {exc}") from None
    reissued = cert is None or device_id_from_certificate(cert) != device_id
    if reissued:
        cert = make_certificate(key)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    assert cert is not None
    return Identity(device_id, key, cert, key_path, cert_path, reissued)


def _write(path: Path, data: bytes, mode: int) -> None:
    """:func:`write_file_durably`, failing with an error that names the file."""
    try:
        write_file_durably(path, data, mode)
    except OSError as exc:
        raise IdentityError(f"cannot write {path}: {exc.strerror or exc}") from None


def _incomplete(key_path: Path, cert_path: Path) -> IdentityError:
    return IdentityError(
        f"{key_path} is missing but {cert_path} exists: this device's identity is "
        f"incomplete. Restore {KEY_FILE} from a backup, or remove {cert_path} to start as a "
        "new device (a new device ID that peers must trust again)",
        reason="no_identity",
    )


def load_or_create_identity(state_dir: Path) -> tuple[Identity, bool]:
    """Load the identity, creating it first when there is none; returns (identity, created)."""
    if identity_exists(state_dir):
        return load_identity(state_dir), False
    return create_identity(state_dir), True


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex (what the transport pins after the handshake)."""
    return cert.fingerprint(hashes.SHA256()).hex()
