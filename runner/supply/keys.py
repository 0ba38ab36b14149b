"""Signing keys: an ECDSA P-256 private key in PEM (PKCS#8 or SEC1, optionally encrypted with
a passphrase kept in its own file), loaded into a securesystemslib signer; its public half as
`cosign verify --key` reads it; new key pairs for `runner keys generate`.

The passphrase and the private key are never logged, stored or put in an error message."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner, SSlibKey

#: cosign's own signatures carry no key id, and its verifier skips a signature whose key id is
#: set but not one it computes: ours carry none either
KEY_ID = ""
MAX_KEY_FILE = 64 * 1024


class SigningKeyError(ValueError):
    """A key or passphrase that cannot be used; the message names the file, never a secret."""


@dataclass(frozen=True)
class SigningKey:
    """A private key ready to sign, and what may be shown of it."""

    signer: CryptoSigner
    public: ec.EllipticCurvePublicKey
    public_pem: bytes
    key_id: str  # sha256:<hex> of the public key's DER (SubjectPublicKeyInfo)

    def sign(self, payload: bytes) -> str:
        """ECDSA P-256 over SHA-256 of `payload`: the DER signature, base64 (cosign's annotation)."""
        return base64.b64encode(bytes.fromhex(self.signer.sign(payload).signature)).decode()


def fingerprint(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()[: MAX_KEY_FILE + 1]
    except OSError as exc:
        raise SigningKeyError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_KEY_FILE:
        raise SigningKeyError(f"{what} {path}: over {MAX_KEY_FILE} bytes, not a key")
    return data


def read_passphrase(path: Path) -> bytes:
    """A passphrase file's content without its final newline."""
    data = _read(path, "signing.passphrase_file")
    return data[:-1] if data.endswith(b"\n") else data


def _p256(key: object, where: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        raise SigningKeyError(f"{where}: not an ECDSA P-256 key (cosign and this runner sign with P-256)")


def signing_key(private: ec.EllipticCurvePrivateKey) -> SigningKey:
    public = SSlibKey.from_crypto(private.public_key(), keyid="unused", scheme="ecdsa-sha2-nistp256")
    keyed = SSlibKey(KEY_ID, public.keytype, public.scheme, public.keyval)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey(CryptoSigner(private, keyed), private.public_key(), pem, fingerprint(private.public_key()))


def load_private_key(key_file: Path, passphrase_file: Path | None = None, passphrase: bytes | None = None) -> SigningKey:
    """The key in `key_file`, decrypted with the passphrase (from `passphrase_file`, or given).
    Raises SigningKeyError saying what is wrong (never what the passphrase or key is)."""
    data = _read(key_file, "signing.key_file")
    if passphrase is None and passphrase_file is not None:
        passphrase = read_passphrase(passphrase_file)
    where = f"signing.key_file {key_file}"
    try:
        private = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        if passphrase:
            raise SigningKeyError(f"{where}: the key is not encrypted, but a passphrase is set") from None
        raise SigningKeyError(f"{where}: the key is encrypted: set signing.passphrase_file") from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " or the passphrase is wrong" if passphrase else ""
        raise SigningKeyError(f"{where}: not a PEM private key (PKCS#8 or EC){hint}") from None
    _p256(private, where)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return signing_key(private)


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A PEM public key (as `cosign verify --key` takes), P-256."""
    data = _read(path, "public key")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(f"public key {path}: not a PEM public key") from None
    _p256(public, f"public key {path}")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def generate(prefix: Path, passphrase: bytes | None) -> tuple[Path, Path]:
    """A new P-256 key pair: PREFIX.key (PKCS#8 PEM, encrypted when a passphrase is given;
    mode 0600) and PREFIX.pub. Refuses to overwrite either."""
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(f"{path} exists already; choose another --output or move it away")
    private = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_bytes(signing_key(private).public_pem)
    return private_path, public_path


class KeyHolder:
    """The worker's signing key, loaded at start and loaded again when the key file or the
    passphrase file changes on disk (a rotated Kubernetes secret needs no restart)."""

    def __init__(self, key_file: Path, passphrase_file: Path | None = None):
        self.key_file, self.passphrase_file = key_file, passphrase_file
        self._stamp: tuple | None = None
        self._key: SigningKey | None = None

    def _files_stamp(self) -> tuple:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.key_file, self.passphrase_file):
            if path is None:
                continue
            try:
                st = path.stat()
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def current(self) -> SigningKey:
        """The key as the files hold it now; raises SigningKeyError when it cannot be loaded."""
        stamp = self._files_stamp()
        if self._key is None or stamp != self._stamp:
            self._key = load_private_key(self.key_file, self.passphrase_file)
            self._stamp = stamp
        return self._key
