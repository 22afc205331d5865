"""JWT verification and issuance (PyJWT).

Keys:

- **HS256 secrets**, a list for rotation: a token verifies if any accepted secret
  signed it; drop a secret from the list and its tokens fail (``bad_signature``).
  Secrets shorter than 32 bytes are refused at start (RFC 7518 §3.2).
- **JWKS** (file path or ``http(s)://`` URL): asymmetric public keys matched by the
  token header's ``kid``. Each key type has its own algorithm allow-list
  (RSA: RS*/PS*, EC: ES256/384/512 on the matching curve, OKP: EdDSA), and a
  key's own ``alg`` if it has one. ``oct`` (symmetric) keys and keys whose ``use`` is
  not ``sig`` never verify a token. A JWKS file is read once at start.

``alg: none`` and every algorithm outside those lists is refused, and an HMAC token
is only ever checked against the configured secrets, never against a JWKS public key,
so the classic "HS256 signed with the public key" confusion cannot verify.

Claims:

- ``sub`` (required, non-empty string, at most 256 characters): the actor.
- ``org`` (default ``default``): the tenant; a non-empty string of at most 128
  characters without ``/`` or control characters.
- ``docs`` (default ``["**"]``, every doc *of the token's org*): a list of globs
  (see :mod:`.principal`); an empty list grants no doc.
- ``mode`` (default ``read``, the least privilege): ``read`` | ``write`` | ``admin``.
- ``exp`` (required unless ``require_exp=False``), ``nbf``/``iat`` checked when
  present; ``aud`` / ``iss`` checked when configured (a token carrying an ``aud``
  while no audience is configured is refused too: it was meant for someone else).

Every failure is a :class:`TokenError` with a short machine ``reason``. Messages
never contain the token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
    PyJWKClientConnectionError,
    PyJWKClientError,
    PyJWKSetError,
    PyJWTError,
)

from ..inputs import refused_char
from .principal import ALL_DOCS, DEFAULT_ORG, MODES, Grant, Principal

logger = logging.getLogger(__name__)

Reason = Literal[
    "missing",
    "malformed",
    "bad_signature",
    "expired",
    "unknown_kid",
    "wrong_audience",
    "wrong_issuer",
    "invalid_claims",
    "unavailable",
]

MAX_TOKEN_CHARS = 8192
MAX_SUB_CHARS = 256
MAX_ORG_CHARS = 128
MAX_DOC_PATTERNS = 256
MAX_PATTERN_CHARS = 512
MIN_SECRET_BYTES = 32
HMAC_ALGORITHMS = ("HS256",)
# Per JWK key type, the algorithms a token may name; for EC also the curve each needs.
KEY_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ASYMMETRIC_ALGORITHMS = frozenset(alg for algs in KEY_ALGORITHMS.values() for alg in algs)


class TokenError(Exception):
    """A token that does not authenticate; ``reason`` is one short machine word.

    ``detail`` is for logs and error bodies; it never contains the token.
    """

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason
        self.detail = detail or reason


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _valid_org(org: object) -> bool:
    return (
        isinstance(org, str)
        and 0 < len(org) <= MAX_ORG_CHARS
        and "/" not in org
        and refused_char(org) is None
    )


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """The :class:`Principal` a verified claim set (token or webhook answer) stands for.

    Raises:
        TokenError: ``invalid_claims`` for a missing or ill-typed claim.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
        raise TokenError("invalid_claims", "sub must be a non-empty string")
    if refused_char(sub) is not None:
        # The actor is logged, stored in frames (``who``) and named by revocation:
        # the same character rule as every name (no lone surrogate the store would
        # refuse after the doc changed, no control or bidi character).
        raise TokenError("invalid_claims", "sub holds a character names may not hold")
    org = claims.get("org", DEFAULT_ORG)
    if not _valid_org(org):
        raise TokenError(
            "invalid_claims", f"org must be a string of 1..{MAX_ORG_CHARS} chars without '/'"
        )
    docs = claims.get("docs", [ALL_DOCS])
    if (
        not isinstance(docs, list)
        or len(docs) > MAX_DOC_PATTERNS
        or not all(isinstance(d, str) and 0 < len(d) <= MAX_PATTERN_CHARS for d in docs)
    ):
        raise TokenError("invalid_claims", "docs must be a list of non-empty glob strings")
    mode = claims.get("mode", "read")
    if mode not in MODES:
        raise TokenError("invalid_claims", f"mode must be one of {', '.join(MODES)}")
    exp = claims.get("exp")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
        raise TokenError("invalid_claims", "exp must be a number")
    return Principal(org, sub, Grant(tuple(docs), mode), None if exp is None else float(exp))


def _load_jwks_file(path: str) -> jwt.PyJWKSet:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("a JWKS is a JSON object with a 'keys' list")
        return jwt.PyJWKSet.from_dict(data)
    except (OSError, ValueError, PyJWKSetError) as exc:
        raise ValueError(f"cannot load JWKS file {path!r}: {exc}") from None


def _key_accepts(key: jwt.PyJWK, alg: str) -> bool:
    """Whether ``key`` may verify a token naming ``alg`` (type, own alg, curve)."""
    if alg not in KEY_ALGORITHMS.get(key.key_type or "", ()):
        return False
    own_alg = key._jwk_data.get("alg")
    if own_alg is not None and own_alg != alg:
        return False
    if key.key_type == "EC":
        curve = getattr(getattr(key.key, "curve", None), "name", None)
        return curve == EC_CURVES[alg]
    return True


class TokenVerifier:
    """Verifies JWTs and turns them into a :class:`Principal`.

    Args:
        secrets: Accepted HS256 secrets (rotation: every one is tried).
        jwks: A JWKS file path, or an ``http://``/``https://`` URL fetched with
            :class:`jwt.PyJWKClient` (cached ``jwks_cache_seconds``; an unknown
            ``kid`` triggers at most one refetch per cooldown).
        audience: When set, ``aud`` must name it.
        issuer: When set, ``iss`` must equal it.
        leeway: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``.
        require_exp: Refuse tokens without ``exp`` (the default).

    Raises:
        ValueError: no key at all, a secret shorter than 32 bytes, or an unloadable
            JWKS file.
    """

    def __init__(
        self,
        secrets: Sequence[str | bytes] = (),
        jwks: str | None = None,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        require_exp: bool = True,
        jwks_cache_seconds: float = 300.0,
        jwks_timeout: float = 5.0,
    ) -> None:
        self._secrets = [_secret_bytes(s) for s in secrets]
        for number, secret in enumerate(self._secrets, 1):
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"auth secret #{number} is {len(secret)} bytes; HS256 needs at least "
                    f"{MIN_SECRET_BYTES}"
                )
        self._jwks_set: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        if jwks:
            if jwks.startswith(("http://", "https://")):
                self._jwks_client = jwt.PyJWKClient(
                    jwks, lifespan=jwks_cache_seconds, timeout=jwks_timeout
                )
            else:
                self._jwks_set = _load_jwks_file(jwks)
        if not self._secrets and not jwks:
            raise ValueError("a TokenVerifier needs at least one secret or a JWKS")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.require_exp = require_exp

    @property
    def blocking(self) -> bool:
        """Whether :meth:`verify` may do network I/O (JWKS URL): run it in a thread."""
        return self._jwks_client is not None

    def _asymmetric_key(self, kid: object, alg: str) -> Any:
        if not isinstance(kid, str) or not kid:
            raise TokenError("unknown_kid", "token header has no kid")
        key: jwt.PyJWK | None = None
        if self._jwks_set is not None:
            key = next(
                (
                    k
                    for k in self._jwks_set.keys
                    if k.key_id == kid and k.public_key_use in (None, "sig")
                ),
                None,
            )
        elif self._jwks_client is not None:
            try:
                key = self._jwks_client.get_signing_key(kid)
            except PyJWKClientConnectionError as exc:
                logger.warning("JWKS fetch failed: %s", exc)
                raise TokenError("unavailable", "the JWKS could not be fetched") from None
            except PyJWKClientError:
                key = None
            except (PyJWTError, ValueError) as exc:
                # A JWKS URL that answers something else (a proxy's HTML page: not JSON;
                # an empty or unusable key set): nobody can be verified, fail closed.
                logger.warning("JWKS at the configured URL is unusable: %s", exc)
                raise TokenError("unavailable", "the JWKS is unusable") from None
        if key is None:
            raise TokenError("unknown_kid", f"no JWKS key has kid {kid!r}")
        if not _key_accepts(key, alg):
            raise TokenError("bad_signature", f"key {kid!r} does not sign with {alg}")
        return key.key

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        required = ["sub"] + (["exp"] if self.require_exp else [])
        return jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            options={"require": required, "verify_sub": False},
        )

    def verify(self, token: str | None) -> Principal:
        """The principal ``token`` stands for.

        Raises:
            TokenError: the token is missing, malformed, unsigned, badly signed,
                expired, for another audience or issuer, or its claims are wrong.
        """
        if not token:
            raise TokenError("missing", "no token")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("malformed", f"token longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise TokenError("malformed", "not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenError("malformed", "token header has no alg")
        try:
            if alg in HMAC_ALGORITHMS:
                claims = self._verify_hmac(token, alg)
            elif alg in ASYMMETRIC_ALGORITHMS and (self._jwks_set or self._jwks_client):
                claims = self._decode(token, self._asymmetric_key(header.get("kid"), alg), alg)
            else:
                raise TokenError("bad_signature", f"algorithm {alg!r} is not accepted")
        except ExpiredSignatureError:
            raise TokenError("expired", "token has expired") from None
        except InvalidAudienceError:
            raise TokenError("wrong_audience", "token is not for this audience") from None
        except InvalidIssuerError:
            raise TokenError("wrong_issuer", "token is from another issuer") from None
        except MissingRequiredClaimError as exc:
            if exc.claim == "aud":
                raise TokenError("wrong_audience", "token has no aud") from None
            if exc.claim == "iss":
                raise TokenError("wrong_issuer", "token has no iss") from None
            raise TokenError("invalid_claims", f"token has no {exc.claim}") from None
        except (InvalidSignatureError, InvalidAlgorithmError, InvalidKeyError):
            raise TokenError("bad_signature", "signature does not verify") from None
        except ImmatureSignatureError:
            raise TokenError("invalid_claims", "token is not valid yet") from None
        except DecodeError as exc:
            # PyJWT reports an ill-typed exp/iat/nbf as a DecodeError naming the claim
            if "claim" in str(exc):
                raise TokenError("invalid_claims", "a time claim is not a number") from None
            raise TokenError("malformed", "token does not decode") from None
        except InvalidTokenError as exc:
            raise TokenError("invalid_claims", type(exc).__name__) from None
        principal = principal_from_claims(claims)
        if principal.expires_at is not None and self.leeway:
            # Accepted up to exp + leeway: the session must last as long, or a client
            # admitted within the leeway would be closed (4401) at once, and reconnect.
            principal = dataclasses.replace(
                principal, expires_at=principal.expires_at + self.leeway
            )
        return principal

    def _verify_hmac(self, token: str, alg: str) -> dict[str, Any]:
        if not self._secrets:
            raise TokenError("bad_signature", f"algorithm {alg!r} is not accepted")
        for secret in self._secrets:
            try:
                return self._decode(token, secret, alg)
            except InvalidSignatureError:
                continue
        raise InvalidSignatureError("no accepted secret signed the token")


def issue_token(
    secret: str | bytes,
    sub: str,
    org: str = DEFAULT_ORG,
    docs: Sequence[str] = (ALL_DOCS,),
    mode: str = "read",
    ttl_seconds: float | None = 3600.0,
    aud: str | None = None,
    iss: str | None = None,
    *,
    now: float | None = None,
) -> str:
    """An HS256 token for ``sub`` in ``org`` granting ``mode`` on ``docs``.

    Args:
        ttl_seconds: Lifetime; ``None`` issues a token without ``exp`` (only
            accepted by a verifier built with ``require_exp=False``).
        now: Issue time in epoch seconds (default: the wall clock).

    Raises:
        ValueError: the claims would not verify (bad sub/org/docs/mode, short secret).
    """
    key = _secret_bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"HS256 needs a secret of at least {MIN_SECRET_BYTES} bytes")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "org": org,
        "docs": list(docs),
        "mode": mode,
        "iat": issued,
    }
    if ttl_seconds is not None:
        claims["exp"] = issued + int(ttl_seconds)
    if aud is not None:
        claims["aud"] = aud
    if iss is not None:
        claims["iss"] = iss
    try:
        principal_from_claims(claims)
    except TokenError as exc:
        raise ValueError(exc.detail) from None
    return jwt.encode(claims, key, algorithm="HS256")
