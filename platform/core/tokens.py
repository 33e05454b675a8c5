"""Bearer tokens stored hashed: only a lookup prefix and a SHA-256 of the secret are kept.

Tokens carry 256 bits of randomness, so a fast hash is enough (no password-style stretching);
the raw token is shown once, at issue.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX_LENGTH = 12


@dataclass(frozen=True)
class IssuedToken:
    raw: str
    prefix: str
    digest: str


def issue_token(kind: str) -> IssuedToken:
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    raw = f"{kind}_{prefix}_{secrets.token_urlsafe(32)}"
    return IssuedToken(raw=raw, prefix=prefix, digest=token_digest(raw))


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_prefix(raw: str, *, kind: str) -> str | None:
    """The lookup prefix of a well-formed token of `kind`, else None."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != PREFIX_LENGTH:
        return None
    return parts[1]


def digest_matches(raw: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(raw), digest)
