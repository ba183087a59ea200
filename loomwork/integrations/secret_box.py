"""Encryption at rest for secrets (webhook secrets, OAuth tokens): Fernet, key from settings."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from loomwork.errors import FailedPrecondition

log = logging.getLogger(__name__)

DEV_KEY_FILE = "secret.key"


def _fernet_key(secret: str) -> bytes:
    """A Fernet key as given, or one derived (SHA-256) from any other passphrase."""
    raw = secret.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw
    except ValueError:
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


class SecretBox:
    """Encrypts and decrypts small secrets; ciphertexts are authenticated (Fernet)."""

    def __init__(self, secret: str) -> None:
        if len(secret.strip()) < 16:
            raise FailedPrecondition("LOOMWORK_SECRET_KEY must be at least 16 characters")
        self._fernet = Fernet(_fernet_key(secret))

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(ciphertext)).decode()
        except InvalidToken as exc:
            raise FailedPrecondition(
                "a stored secret cannot be decrypted: LOOMWORK_SECRET_KEY differs from the key "
                "it was stored with"
            ) from exc


def dev_secret(home: Path) -> str:
    """The development key kept in `<home>/secret.key`, created on first use."""
    path = home / DEV_KEY_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key().decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        log.warning("created a development secret key in %s", path)
    return path.read_text().strip()


def secret_box(secret_key: str | None, home: Path) -> SecretBox:
    """The box for LOOMWORK_SECRET_KEY, or (unset) for the development key under `home`."""
    if secret_key:
        return SecretBox(secret_key)
    path = home / DEV_KEY_FILE
    log.warning(
        "LOOMWORK_SECRET_KEY is not set: encrypting secrets with the development key in %s. "
        "Set LOOMWORK_SECRET_KEY (the same value on every server and worker) in production.",
        path,
    )
    try:
        return SecretBox(dev_secret(home))
    except FileExistsError:  # another process created it a moment ago
        return SecretBox(path.read_text().strip())
