"""Encryption of secureJsonData at rest: AES-256-GCM from the `cryptography` package.

The key is GATEWAY_SECRET_KEY, or 32 random bytes generated once into `<data>/secret.key`
(mode 0600). Any key text is stretched to 32 bytes with HKDF-SHA256, so a passphrase works as
well as a generated key. Ciphertexts are `v1:` + base64(nonce || ciphertext+tag); the version
prefix leaves room for a future scheme without guessing.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PREFIX = "v1:"
_NONCE_BYTES = 12
_AAD = b"datasource-gateway/secure_json_data"
_CHECK_PLAINTEXT = b"datasource-gateway key check"
KEY_FILE_NAME = "secret.key"


class SecretKeyMismatch(Exception):
    """The key cannot decrypt what the database holds: it is not the key it was written with."""


class SecretBox:
    def __init__(self, key_text: str) -> None:
        if not key_text.strip():
            raise ValueError("the secret key must not be empty")
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"datasource-gateway v1"
        ).derive(key_text.strip().encode())
        self._aead = AESGCM(derived)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def encrypt(self, values: Mapping[str, str]) -> str:
        return self._seal(json.dumps(dict(values), sort_keys=True).encode())

    def decrypt(self, token: str) -> dict[str, str]:
        data = json.loads(self._open(token))
        if not isinstance(data, dict):
            raise SecretKeyMismatch("decrypted secrets are not an object")
        return {str(k): str(v) for k, v in data.items()}

    def key_check(self) -> str:
        """A ciphertext stored beside the data so start-up can tell a wrong key before using it."""
        return self._seal(_CHECK_PLAINTEXT)

    def verify_key_check(self, token: str) -> None:
        if self._open(token) != _CHECK_PLAINTEXT:
            raise SecretKeyMismatch("key check value does not match")

    def _seal(self, plaintext: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _AAD)
        return _PREFIX + base64.b64encode(nonce + sealed).decode()

    def _open(self, token: str) -> bytes:
        if not token.startswith(_PREFIX):
            raise SecretKeyMismatch("unknown ciphertext format")
        raw = base64.b64decode(token[len(_PREFIX) :])
        try:
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _AAD)
        except InvalidTag as exc:
            raise SecretKeyMismatch("the secret key does not decrypt the stored secrets") from exc


def generate_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def write_private_file(path: Path, text: str) -> None:
    """Create `path` with mode 0600 from the start (never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def load_key_text(data_dir: Path, configured: str | None) -> tuple[str, str]:
    """The key text and where it came from: the setting, else `<data>/secret.key` (made once)."""
    if configured:
        return configured, "GATEWAY_SECRET_KEY"
    path = data_dir / KEY_FILE_NAME
    if not path.exists():
        write_private_file(path, generate_key_text())
    return path.read_text().strip(), str(path)
