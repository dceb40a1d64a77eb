"""Key files of the audit bundles: the Ed25519 signing pair and the pseudonym key.

Files (default folder ``data/state/keys/``):

``signing.key``
    Ed25519 private key, PEM (PKCS#8, unencrypted), mode 0600. Signs bundle manifests.
``signing.pub``
    The matching public key, PEM (SubjectPublicKeyInfo). Given to insurers.
``pseudonym.key``
    32 random bytes as 64 hex digits, mode 0600: the HMAC-SHA256 key that turns VINs into
    pseudonyms. It never leaves the fleet; without it a pseudonym cannot be linked to a VIN.

Secret files are created race-free (written to a hidden temporary file with mode 0600,
fsync'ed, then hard-linked to their name, which fails if the name exists) and refused
when other users can read them, as OpenSSH does with private keys.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bms import write_secret_file
from reports._errors import ReportError

SIGNING_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"
PSEUDONYM_KEY_NAME = "pseudonym.key"
#: Length of the pseudonym HMAC key [bytes] (the SHA-256 block-size rule of RFC 2104
#: asks for at least the digest length, 32 bytes).
PSEUDONYM_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Paths of a signing key pair and the fingerprint of its public key.

    Attributes
    ----------
    private_key, public_key : Path
        PEM files written by ``generate_signing_keys``.
    fingerprint : str
        ``sha256:`` and the hex SHA-256 of the raw 32-byte public key.
    """

    private_key: Path
    public_key: Path
    fingerprint: str


def public_key_fingerprint(key: Ed25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte Ed25519 public key (RFC 8032 encoding)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _make_key_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"key folder {out_dir} is not a directory")
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create key folder {out_dir}: {exc.strerror}") from None


def generate_signing_keys(out_dir: Path, *, force: bool = False) -> KeyPair:
    """Create an Ed25519 key pair for signing audit bundles.

    Parameters
    ----------
    out_dir : Path
        Folder of the keys (created with mode 0700 if missing), usually
        ``data/state/keys``. The private key goes to ``signing.key`` (mode 0600), the
        public key beside it to ``signing.pub`` (mode 0644).
    force : bool
        Replace an existing pair. Bundles signed with the old key then verify only
        against the old public key.

    Returns
    -------
    KeyPair

    Raises
    ------
    ReportError
        A key file exists and ``force`` is false, or the folder is not writable.
    """
    private_path = out_dir / SIGNING_KEY_NAME
    public_path = out_dir / PUBLIC_KEY_NAME
    if not force:
        for p in (private_path, public_path):
            if p.exists() or p.is_symlink():
                raise ReportError(
                    f"{p} already exists; pass --force to replace the key pair "
                    "(bundles signed with the old key then need the old public key)"
                )
    _make_key_dir(out_dir)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        write_secret_file(private_path, private_pem, 0o600, replace=force)
        write_secret_file(public_path, public_pem, 0o644, replace=force)
    except FileExistsError as exc:
        raise ReportError(f"{exc.filename} appeared while writing; not replaced") from None
    except OSError as exc:
        raise ReportError(f"cannot write keys to {out_dir}: {exc.strerror}") from None
    return KeyPair(private_path, public_path, public_key_fingerprint(key.public_key()))


def _read_secret(path: Path, what: str) -> bytes:
    """Bytes of a secret file; refuse files that group or others can read."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ReportError(f"{what} {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ReportError(
                f"{what} {path} is readable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ReportError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM PKCS#8, unencrypted).

    Raises
    ------
    ReportError
        Missing file, readable by others, not PEM, or not an Ed25519 key.
    """
    data = _read_secret(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ReportError(
            f"signing key {path} is not an unencrypted PEM private key "
            "(make one with: fleetbms keys generate)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReportError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key: PEM (SubjectPublicKeyInfo) or the raw 32 bytes.

    Raises
    ------
    ReportError
        Missing or unreadable file, or not an Ed25519 public key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"public key {path} does not exist") from None
    except IsADirectoryError:
        raise ReportError(f"public key {path} is a directory") from None
    except OSError as exc:
        raise ReportError(f"cannot read public key {path}: {exc.strerror}") from None
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ReportError(f"public key {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReportError(f"public key {path} is not an Ed25519 key")
    return key


def load_or_create_pseudonym_key(keys_dir: Path) -> bytes:
    """The fleet's pseudonym HMAC key, created (0600) on first use.

    Parameters
    ----------
    keys_dir : Path
        Folder of ``pseudonym.key`` (usually ``data/state/keys``).

    Returns
    -------
    bytes
        The 32-byte key.

    Raises
    ------
    ReportError
        The file exists but is not 64 hex digits, is readable by others, or the folder
        is not writable.
    """
    path = keys_dir / PSEUDONYM_KEY_NAME
    if not path.exists():
        _make_key_dir(keys_dir)
        text = secrets.token_bytes(PSEUDONYM_KEY_BYTES).hex() + "\n"
        try:
            write_secret_file(path, text.encode("ascii"), 0o600, replace=False)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError as exc:
            raise ReportError(f"cannot create pseudonym key {path}: {exc.strerror}") from None
    data = _read_secret(path, "pseudonym key").strip()
    try:
        key = bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != PSEUDONYM_KEY_BYTES:
        raise ReportError(
            f"pseudonym key {path} is not {2 * PSEUDONYM_KEY_BYTES} hex digits; "
            "restore it from a backup (a new key gives new pseudonyms)"
        )
    return key
