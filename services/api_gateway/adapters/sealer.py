"""Sandbox env values, sealed with the gateway's own key: what the event
store and the bus never hold in the clear (XSalsa20-Poly1305, PyNaCl's
SecretBox), and the keyed digest that stands for a create body."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path

import nacl.exceptions
import nacl.secret

from common.deploy import new_secrets_key

log = logging.getLogger("corral.gateway.secrets")


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != nacl.secret.SecretBox.KEY_SIZE:
            raise ValueError("the secrets key must be 32 bytes (base64url-encoded)")
        self._box = nacl.secret.SecretBox(key)
        self._mac_key = hashlib.sha256(b"corral request digest\0" + key).digest()
        self._token_key = hashlib.sha256(b"corral sandbox access\0" + key).digest()

    def __repr__(self) -> str:
        return "Sealer(***)"

    @classmethod
    def from_text(cls, text: str) -> Sealer:
        return cls(base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4)))

    @classmethod
    def load_or_create(cls, path: Path) -> Sealer:
        """One key kept beside the state (0600); every gateway instance must share it."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.touch(mode=0o600)
            tmp.write_text(new_secrets_key())
            tmp.replace(path)
            log.warning("generated a secrets key at %s: give every gateway instance this key "
                        "(CORRAL_SECRETS_KEY)", path)
        return cls.from_text(path.read_text())

    def seal(self, values: dict[str, str]) -> str:
        raw = json.dumps(values, separators=(",", ":")).encode()
        return base64.b64encode(self._box.encrypt(raw)).decode()

    def open(self, sealed: str) -> dict[str, str]:
        try:
            doc = json.loads(self._box.decrypt(base64.b64decode(sealed)))
        except (nacl.exceptions.CryptoError, ValueError) as e:
            raise ValueError("sealed env cannot be opened with this key") from e
        return {str(k): str(v) for k, v in doc.items()}

    def digest(self, canonical: bytes) -> str:
        """Keyed, so a digest on the bus reveals nothing about low-entropy values."""
        return hmac.new(self._mac_key, canonical, hashlib.sha256).hexdigest()

    def access_token(self, org_id: str, sandbox_id: str) -> str:
        """A bearer token for one sandbox of one org (E2B's envd access token):
        the org id and a MAC of both, so any gateway instance checks it alone."""
        mac = hmac.new(self._token_key, f"{org_id}/{sandbox_id}".encode(), hashlib.sha256)
        return f"{org_id}.{base64.urlsafe_b64encode(mac.digest()[:24]).decode()}"

    def token_org(self, token: str, sandbox_id: str) -> str | None:
        """The org a token was made for, if it was made for this sandbox."""
        org_id, dot, _ = token.rpartition(".")
        if not dot or not org_id or len(token) > 200:
            return None
        return org_id if hmac.compare_digest(token, self.access_token(org_id, sandbox_id)) else None

