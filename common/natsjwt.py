"""NATS nkeys (ed25519 keys in base32 with a role prefix and a CRC16) and
NATS JWTs (v2: `ed25519-nkey`), enough for an auth callout: verify the
server's request, sign the response and the user's claims."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

import nacl.exceptions
import nacl.signing

ROLES = {"account": 0, "server": 13 << 3, "user": 20 << 3, "operator": 14 << 3}
_SEED = 18 << 3
HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class InvalidKey(ValueError):
    pass


class InvalidToken(ValueError):
    pass


def _crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw + _crc16(raw).to_bytes(2, "little")).decode().rstrip("=")


def _decode(text: str) -> bytes:
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        raise InvalidKey("not base32") from None
    body, crc = raw[:-2], raw[-2:]
    if len(raw) < 3 or _crc16(body).to_bytes(2, "little") != crc:
        raise InvalidKey("bad checksum")
    return body


def new_seed(role: str) -> str:
    """A fresh nkey seed ("S" + role letter ...) for `role`."""
    prefix = ROLES[role]
    return _encode(bytes([_SEED | (prefix >> 5), (prefix & 31) << 3]) + os.urandom(32))


def _signing_key(seed: str) -> tuple[int, nacl.signing.SigningKey]:
    body = _decode(seed)
    if len(body) != 34 or (body[0] & 0xF8) != _SEED:
        raise InvalidKey("not an nkey seed")
    role = ((body[0] & 7) << 5) | ((body[1] & 0xF8) >> 3)
    return role, nacl.signing.SigningKey(body[2:])


def public_key(seed: str) -> str:
    role, sk = _signing_key(seed)
    return _encode(bytes([role]) + bytes(sk.verify_key))


def _verify_key(public: str, role: str) -> nacl.signing.VerifyKey:
    body = _decode(public)
    if len(body) != 33 or body[0] != ROLES[role]:
        raise InvalidKey(f"not a {role} public key")
    return nacl.signing.VerifyKey(body[1:])


def is_public_key(text: str, role: str) -> bool:
    try:
        _verify_key(text, role)
        return True
    except InvalidKey:
        return False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], seed: str) -> str:
    """`claims` signed by `seed` (its public key becomes `iss`)."""
    body = {**claims, "iss": public_key(seed), "iat": int(time.time())}
    digest = hashlib.sha512(json.dumps(body, sort_keys=True).encode()).digest()[:32]
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps(HEADER, separators=(",", ":")).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature = _signing_key(seed)[1].sign(f"{head}.{payload}".encode()).signature
    return f"{head}.{payload}.{_b64(signature)}"


def decode(token: str, issuer_role: str) -> dict[str, Any]:
    """The claims of a JWT whose signature verifies against its own `iss`, which
    must be a public key of `issuer_role`; expired tokens are refused."""
    try:
        head, payload, signature = token.split(".")
        header, claims = json.loads(_unb64(head)), json.loads(_unb64(payload))
        if header.get("alg") != HEADER["alg"] or not isinstance(claims, dict):
            raise InvalidToken("unsupported token")
        _verify_key(str(claims.get("iss")), issuer_role).verify(
            f"{head}.{payload}".encode(), _unb64(signature))
    except (ValueError, TypeError, InvalidKey, nacl.exceptions.BadSignatureError) as e:
        raise InvalidToken(f"invalid token: {e.__class__.__name__}") from None
    exp = claims.get("exp")
    if isinstance(exp, int) and exp < time.time():
        raise InvalidToken("token expired")
    return claims
