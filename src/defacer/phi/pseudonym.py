"""Keyed, deterministic replacement values: UIDs, pseudonymous IDs and date offsets.

Every value is derived with HMAC-SHA256 from a secret key and the original value, so the
same original always maps to the same replacement for the same key, across files, series,
runs and machines, while someone without the key can neither reverse nor re-derive the map
(unlike md5 of a guessable seed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from defacer._typing import PathLike
from defacer.errors import DefacerError

log = logging.getLogger(__name__)

#: Smallest and largest date shift, in days (dates move into the past).
DATE_SHIFT_RANGE = (365, 3650)


class Pseudonymizer:
    """Derive replacement values from a secret key.

    Parameters
    ----------
    key : bytes
        The secret.  At least 16 bytes; keep it private and reuse it to keep pseudonyms
        stable across runs.

    Examples
    --------
    >>> p = Pseudonymizer(b"0123456789abcdef0123456789abcdef")
    >>> p.uid("1.2.3") == p.uid("1.2.3")
    True
    >>> p.uid("1.2.3").startswith("2.25.")
    True
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            message = f"The de-identification key must be at least 16 bytes long; got {len(key)}. Use a longer secret."
            raise ValueError(message)
        self._key = key

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, kind.encode() + b"\x00" + value.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A new UID for ``original``: ``2.25.`` + a 128-bit UUID (version 8) as a decimal integer.

        At most 44 characters, so it always fits the 64-character UI limit.
        """
        raw = bytearray(self._digest("uid", original.strip().rstrip("\x00"))[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # UUID version 8 (custom)
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return "2.25." + str(int.from_bytes(raw, "big"))

    def keyed_digest(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` under the key, in hex: a digest only the key's holder can recompute (the
        provenance of a de-identified series records its input's sha256 so, never plainly, which would let anyone
        holding the identified original link the two)."""
        return self._digest("content", value).hex()

    def identifier(self, original: str, *, prefix: str = "DF", length: int = 12) -> str:
        """A pseudonymous identifier (upper-case letters and digits), e.g. for PatientID."""
        code = base64.b32encode(self._digest("id", original.strip())).decode().rstrip("=")
        return prefix + code[:length]

    def date_offset_days(self, patient: str) -> int:
        """Number of days to subtract from every date of ``patient`` (same for all their studies)."""
        low, high = DATE_SHIFT_RANGE
        number = int.from_bytes(self._digest("date", patient.strip())[:8], "big")
        return low + number % (high - low + 1)


#: How to make a key file only its owner may read (the umask applies to the file the shell creates).
KEY_FILE_RECIPE = "(umask 077; python -c \"import secrets; print(secrets.token_hex(32))\" > key.txt)"
#: Longest key file read (a key is a short secret: ``/dev/zero`` or a scan given by mistake is refused, not read).
MAX_KEY_FILE_BYTES = 64 * 1024


def load_key(key: str | None = None, key_file: PathLike | None = None) -> tuple[bytes, bool]:
    """Return ``(key bytes, is_random)`` from a text key, a key file, or a fresh random key.

    A random key gives consistent pseudonyms within one run only.

    Raises
    ------
    DefacerError
        If both are given, or the key file cannot be read or is too short.
    """
    if key is not None and key_file is not None:
        raise DefacerError("Give the secret key either with --key or with --key-file, not both.")
    if key_file is not None:
        path = Path(key_file)
        if path.exists() and not path.is_file():  # a named pipe would block the read forever
            raise DefacerError(f"The key file '{path}' is not a regular file (a folder, pipe or device). Check the path.")
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_KEY_FILE_BYTES + 1).strip()
                mode = os.fstat(handle.fileno()).st_mode
        except OSError as err:
            raise DefacerError(f"Cannot read the key file '{path}': {err.strerror}. Check the path.") from err
        if len(data) > MAX_KEY_FILE_BYTES:
            raise DefacerError(
                f"The key file '{path}' holds more than {MAX_KEY_FILE_BYTES // 1024} KiB; a key file holds one short "
                "secret (16 bytes or more, e.g. 64 hex characters). Check that it is the right file."
            )
        if len(data) < 16:
            raise DefacerError(
                f"The key file '{path}' holds {len(data)} bytes; at least 16 are needed. "
                f"Create one readable by you only with: {KEY_FILE_RECIPE}"
            )
        if os.name == "posix" and mode & 0o077:
            # With the key, anyone holding a list of patients' IDs recomputes each one's pseudonym and date shift and
            # so re-identifies the shared data; a key others may write can be replaced between two runs.
            log.warning("the key file '%s' can be read or written by other users (permissions %04o): anyone who can "
                        "read it can recompute the pseudonyms and date shifts from a list of patients' IDs and so "
                        "re-identify the de-identified data. Make it yours only: chmod 600 '%s'", path,
                        stat.S_IMODE(mode), path)
        return data, False
    if key is not None:
        data = key.encode("utf-8")
        if len(data) < 16:
            raise DefacerError(f"The --key is {len(data)} characters long; use at least 16 (better: --key-file).")
        return data, False
    return secrets.token_bytes(32), True
