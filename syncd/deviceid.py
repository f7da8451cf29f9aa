"""Device IDs as people read and type them.

A device ID is the SHA-256 of the device's public key, printed the way Syncthing prints its
IDs: the 32 bytes in base32 (52 characters, no padding) cut into four groups of 13, each
followed by a Luhn mod 32 check character, then shown as eight groups of seven joined by
``-``::

    MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-NSGYCYL-TMRWGC4

Any single mistyped character changes its group's check character, so :func:`parse_device_id`
rejects it. No cryptography here (see :mod:`syncd.identity` for keys and certificates), so
the CLI can check an ID without loading it.
"""

from __future__ import annotations

import base64

from syncd.errors import SyncdError

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_CHUNK = 13
_CHUNKS = 4
ID_CHARS = _CHUNKS * (_CHUNK + 1)  # 56 characters without the dashes


class InvalidDeviceId(SyncdError):
    """A string that is not a well-formed device ID (wrong length, bad character, bad check)."""

    reason = "invalid_device_id"


def luhn32(chars: str) -> str:
    """The Luhn mod 32 check character of ``chars`` (Syncthing's variant, factor 1 first).

    Doubling is a permutation of 0..31 (``2c`` folded as ``2c // 32 + 2c % 32``), so changing
    any one character changes the sum modulo 32 and therefore the check character.
    """
    factor = 1
    total = 0
    for ch in chars:
        addend = factor * _VALUE[ch]
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return ALPHABET[(32 - total % 32) % 32]


def format_device_id(digest: bytes) -> str:
    """Format a 32-byte digest as a device ID (groups with check characters)."""
    if len(digest) != 32:
        raise ValueError("a device ID is made from 32 bytes")
    plain = base64.b32encode(digest).decode("ascii").rstrip("=")
    checked = "".join(
        chunk + luhn32(chunk)
        for chunk in (plain[i : i + _CHUNK] for i in range(0, len(plain), _CHUNK))
    )
    return "-".join(checked[i : i + 7] for i in range(0, len(checked), 7))


def parse_device_id(text: str) -> str:
    """Validate a device ID typed by a person and return its canonical form.

    Case, dashes and spaces are forgiven; length, alphabet and every check character are
    verified. Raises :class:`InvalidDeviceId` with a message that says what is wrong.
    """
    if not isinstance(text, str):
        raise InvalidDeviceId("a device ID must be a string")
    compact = "".join(text.split()).replace("-", "").upper()
    if len(compact) != ID_CHARS:
        raise InvalidDeviceId(
            f"invalid device ID {text!r}: expected {ID_CHARS} characters (8 groups of 7), "
            f"got {len(compact)}"
        )
    bad = sorted({c for c in compact if c not in _VALUE})
    if bad:
        raise InvalidDeviceId(
            f"invalid device ID {text!r}: characters {''.join(bad)!r} are not in the ID "
            "alphabet (A-Z, 2-7)"
        )
    plain = []
    for n in range(_CHUNKS):
        chunk = compact[n * (_CHUNK + 1) : n * (_CHUNK + 1) + _CHUNK]
        check = compact[n * (_CHUNK + 1) + _CHUNK]
        if luhn32(chunk) != check:
            raise InvalidDeviceId(
                f"invalid device ID {text!r}: check character of part {n + 1} does not "
                "match (a character is mistyped)"
            )
        plain.append(chunk)
    raw = "".join(plain)
    digest = base64.b32decode(raw + "====")
    canonical = format_device_id(digest)
    if canonical.replace("-", "") != compact:
        raise InvalidDeviceId(f"invalid device ID {text!r}: not in canonical form")
    return canonical
