"""TokenVerifier: secrets with rotation, JWKS by kid, claims, and every kind of bad token."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest

from crdt_sync.auth.principal import Grant, Principal
from crdt_sync.auth.tokens import TokenError, TokenVerifier, issue_token
from tests.unit.auth_keys import (
    OLD_SECRET,
    SECRET,
    KeyPair,
    claims,
    hand_made,
    http_server,
    jwks,
)


def reason(verifier: TokenVerifier, token: str | None) -> str:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    if token:
        assert token not in str(caught.value)
        assert token not in caught.value.detail
    return caught.value.reason


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair("rsa", "rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> KeyPair:
    return KeyPair("ec", "ec-1")


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: KeyPair, ec_key: KeyPair) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(rsa_key, ec_key, KeyPair("ed25519", "ed-1"))))
    return str(path)


def test_valid_hs256_token_becomes_the_principal() -> None:
    payload = claims()
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    principal = TokenVerifier([SECRET]).verify(token)
    assert principal == Principal(
        "acme", "alice", Grant(("issue/*",), "write"), float(payload["exp"])
    )


def test_rotation_accepts_every_listed_secret_and_refuses_rotated_out_ones() -> None:
    old = jwt.encode(claims(sub="old"), OLD_SECRET, algorithm="HS256")
    new = jwt.encode(claims(sub="new"), SECRET, algorithm="HS256")
    during = TokenVerifier([SECRET, OLD_SECRET])
    assert during.verify(old).actor == "old"
    assert during.verify(new).actor == "new"
    after = TokenVerifier([SECRET])
    assert after.verify(new).actor == "new"
    assert reason(after, old) == "bad_signature"


def test_wrong_secret_and_forged_payload_fail_the_signature() -> None:
    verifier = TokenVerifier([SECRET])
    assert reason(verifier, jwt.encode(claims(), "w" * 40, algorithm="HS256")) == "bad_signature"
    good = jwt.encode(claims(mode="read"), SECRET, algorithm="HS256")
    header, _, signature = good.split(".")
    forged_payload = jwt.encode(claims(mode="admin"), "w" * 40, algorithm="HS256").split(".")[1]
    assert reason(verifier, f"{header}.{forged_payload}.{signature}") == "bad_signature"


def test_alg_none_is_refused_even_with_otherwise_valid_claims(jwks_file: str) -> None:
    unsigned = hand_made({"alg": "none", "typ": "JWT"}, claims())
    assert reason(TokenVerifier([SECRET]), unsigned) == "bad_signature"
    assert reason(TokenVerifier(jwks=jwks_file), unsigned) == "bad_signature"
    upper = hand_made({"alg": "None"}, claims())
    assert reason(TokenVerifier([SECRET], jwks_file), upper) == "bad_signature"


def test_hs256_signed_with_the_jwks_public_key_is_refused(jwks_file: str, rsa_key: KeyPair) -> None:
    """Algorithm confusion: HMAC keyed with the public PEM must not verify."""
    for kid in ("rsa-1", None):
        header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
        forged = hand_made(header, claims(), key=rsa_key.public_pem)
        assert reason(TokenVerifier(jwks=jwks_file), forged) == "bad_signature"
        assert reason(TokenVerifier([SECRET], jwks_file), forged) == "bad_signature"


@pytest.mark.parametrize(
    "token",
    ["", None],
)
def test_missing_token(token: str | None) -> None:
    assert reason(TokenVerifier([SECRET]), token) == "missing"


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.!!!.x", "x" * 9000],
)
def test_malformed_tokens(token: str) -> None:
    assert reason(TokenVerifier([SECRET]), token) == "malformed"


def test_expired_token_and_leeway() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 30), SECRET, algorithm="HS256")
    assert reason(TokenVerifier([SECRET]), token) == "expired"
    assert TokenVerifier([SECRET], leeway=120).verify(token).actor == "alice"


def test_exp_is_required_unless_configured_otherwise() -> None:
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    assert reason(TokenVerifier([SECRET]), token) == "invalid_claims"
    assert TokenVerifier([SECRET], require_exp=False).verify(token).expires_at is None


def test_not_yet_valid_token_is_refused() -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256")
    assert reason(TokenVerifier([SECRET]), token) == "invalid_claims"


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"sub": None}, "no sub"),
        ({"sub": ""}, "empty sub"),
        ({"sub": 42}, "sub not a string"),
        ({"org": ""}, "empty org"),
        ({"org": 7}, "org not a string"),
        ({"org": "acme/../other"}, "org with a slash"),
        ({"org": "ac\x00me"}, "org with a control char"),
        ({"org": ["acme", "other"]}, "org a list"),
        ({"docs": "issue/*"}, "docs a string"),
        ({"docs": [1]}, "docs not strings"),
        ({"docs": [""]}, "empty pattern"),
        ({"mode": "owner"}, "unknown mode"),
        ({"mode": None, "docs": None, "org": None, "exp": "soon"}, "exp not a number"),
    ],
)
def test_wrong_claims_are_invalid(override: dict, why: str) -> None:
    token = jwt.encode(claims(**override), SECRET, algorithm="HS256")
    assert reason(TokenVerifier([SECRET]), token) == "invalid_claims", why


def test_claim_defaults_are_default_org_every_doc_read_only() -> None:
    token = jwt.encode(claims(org=None, docs=None, mode=None), SECRET, algorithm="HS256")
    principal = TokenVerifier([SECRET]).verify(token)
    assert principal.org == "default"
    assert principal.grant == Grant(("**",), "read")


def test_org_claim_is_the_tenant_and_docs_are_relative_to_it() -> None:
    token = issue_token(SECRET, "bob", org="globex", docs=["issue/*"], mode="read")
    principal = TokenVerifier([SECRET]).verify(token)
    assert principal.org == "globex" and principal != Principal.anonymous()
    assert principal.grant.allows("issue/1", "read")


def test_audience_and_issuer_checks() -> None:
    verifier = TokenVerifier([SECRET], audience="crdt", issuer="https://idp")
    ok = jwt.encode(claims(aud="crdt", iss="https://idp"), SECRET, algorithm="HS256")
    assert verifier.verify(ok).actor == "alice"
    wrong_aud = jwt.encode(claims(aud="other", iss="https://idp"), SECRET, algorithm="HS256")
    assert reason(verifier, wrong_aud) == "wrong_audience"
    no_aud = jwt.encode(claims(iss="https://idp"), SECRET, algorithm="HS256")
    assert reason(verifier, no_aud) == "wrong_audience"
    wrong_iss = jwt.encode(claims(aud="crdt", iss="https://evil"), SECRET, algorithm="HS256")
    assert reason(verifier, wrong_iss) == "wrong_issuer"
    no_iss = jwt.encode(claims(aud="crdt"), SECRET, algorithm="HS256")
    assert reason(verifier, no_iss) == "wrong_issuer"
    # A token addressed to some audience is not accepted where none is configured.
    assert reason(TokenVerifier([SECRET]), ok) == "wrong_audience"


def test_jwks_file_verifies_rsa_and_ec_by_kid(
    jwks_file: str, rsa_key: KeyPair, ec_key: KeyPair
) -> None:
    verifier = TokenVerifier(jwks=jwks_file)
    assert not verifier.blocking
    assert verifier.verify(rsa_key.sign(claims(sub="r"))).actor == "r"
    assert verifier.verify(ec_key.sign(claims(sub="e"))).actor == "e"
    # the RSA token naming the EC key's kid is looked up under that key and refused
    assert reason(verifier, rsa_key.sign(claims(), kid="ec-1")) == "bad_signature"


def test_ec_and_ed25519_tokens_verify(tmp_path: Path) -> None:
    ec_pair, ed_pair, p384 = KeyPair("ec", "e"), KeyPair("ed25519", "d"), KeyPair("ec384", "p")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(ec_pair, ed_pair, p384)))
    verifier = TokenVerifier(jwks=str(path))
    assert verifier.verify(ec_pair.sign(claims(sub="ec"))).actor == "ec"
    assert verifier.verify(ed_pair.sign(claims(sub="ed"))).actor == "ed"
    assert verifier.verify(p384.sign(claims(sub="p384"))).actor == "p384"


def test_unknown_or_missing_kid(jwks_file: str, rsa_key: KeyPair) -> None:
    verifier = TokenVerifier(jwks=jwks_file)
    assert reason(verifier, rsa_key.sign(claims(), kid="nope")) == "unknown_kid"
    assert reason(verifier, rsa_key.sign(claims(), kid=None)) == "unknown_kid"


def test_wrong_kid_signature_mismatch(jwks_file: str, ec_key: KeyPair) -> None:
    """A token signed by an unlisted key but naming a listed kid fails the signature."""
    stranger = KeyPair("rsa", "rsa-1")
    assert reason(TokenVerifier(jwks=jwks_file), stranger.sign(claims())) == "bad_signature"
    # an RSA-signed token naming the EC key's kid: type mismatch, refused
    assert reason(TokenVerifier(jwks=jwks_file), stranger.sign(claims(), kid="ec-1")) == (
        "bad_signature"
    )


def test_key_used_with_an_algorithm_outside_its_allow_list(tmp_path: Path) -> None:
    rsa_pair = KeyPair("rsa", "k")
    pinned = {**rsa_pair.jwk, "alg": "RS256"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [pinned]}))
    verifier = TokenVerifier(jwks=str(path))
    assert verifier.verify(rsa_pair.sign(claims())).actor == "alice"
    assert reason(verifier, rsa_pair.sign(claims(), alg="PS256")) == "bad_signature"
    # ES384 signed with a P-256 key naming the P-256 kid: curve mismatch
    p256 = KeyPair("ec", "p256")
    path.write_text(json.dumps(jwks(p256)))
    forged = hand_made({"alg": "ES384", "kid": "p256"}, claims())
    assert reason(TokenVerifier(jwks=str(path)), forged) == "bad_signature"


def test_encryption_keys_and_symmetric_keys_in_a_jwks_never_verify(tmp_path: Path) -> None:
    pair = KeyPair("rsa", "enc-1")
    oct_key = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "oct-1"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**pair.jwk, "use": "enc"}, oct_key]}))
    verifier = TokenVerifier(jwks=str(path))
    assert reason(verifier, pair.sign(claims())) == "unknown_kid"
    secret = b"secret-secret-secret-secret-secret"
    forged = hand_made({"alg": "HS256", "kid": "oct-1"}, claims(), key=secret)
    assert reason(verifier, forged) == "bad_signature"


def test_asymmetric_token_is_refused_when_only_secrets_are_configured(rsa_key: KeyPair) -> None:
    assert reason(TokenVerifier([SECRET]), rsa_key.sign(claims())) == "bad_signature"


def test_hs256_is_refused_when_only_a_jwks_is_configured(jwks_file: str) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert reason(TokenVerifier(jwks=jwks_file), token) == "bad_signature"


def test_jwks_url_is_fetched_and_matched_by_kid(rsa_key: KeyPair, ec_key: KeyPair) -> None:
    body = json.dumps(jwks(rsa_key, ec_key)).encode()
    with http_server(lambda path, _: (200, body)) as (url, seen):
        verifier = TokenVerifier(jwks=url + "/.well-known/jwks.json")
        assert verifier.blocking
        assert verifier.verify(rsa_key.sign(claims(sub="r"))).actor == "r"
        assert verifier.verify(ec_key.sign(claims(sub="e"))).actor == "e"
        assert len(seen) == 1, "the JWK set is cached"
        assert reason(verifier, rsa_key.sign(claims(), kid="rotated")) == "unknown_kid"


def test_unreachable_jwks_url_denies(rsa_key: KeyPair) -> None:
    with http_server(lambda path, _: (500, b"{}")) as (url, _):
        verifier = TokenVerifier(jwks=url + "/jwks")
        assert reason(verifier, rsa_key.sign(claims())) == "unavailable"


@pytest.mark.parametrize(
    "body", [b"<html>proxy error</html>", b'{"keys": []}', b'{"keys": [{"kty": "nope"}]}']
)
def test_unusable_jwks_url_answer_denies(rsa_key: KeyPair, body: bytes) -> None:
    """A JWKS URL answering 200 with something unusable fails closed, as a TokenError
    (401 unavailable), never as a raw exception (a 500)."""
    with http_server(lambda path, _: (200, body)) as (url, _):
        verifier = TokenVerifier(jwks=url + "/jwks")
        assert reason(verifier, rsa_key.sign(claims())) == "unavailable"


def test_session_expiry_includes_the_leeway() -> None:
    """A token accepted within the leeway keeps its session as long: expires_at is
    exp + leeway (else the session would close with 4401 at once, and reconnect)."""
    exp = int(time.time()) - 5
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    principal = TokenVerifier([SECRET], leeway=30).verify(token)
    assert principal.expires_at == exp + 30
    assert TokenVerifier([SECRET]).verify(jwt.encode(claims(), SECRET)).expires_at is not None


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        TokenVerifier()
    with pytest.raises(ValueError, match="needs at least 32"):
        TokenVerifier(["short"])
    with pytest.raises(ValueError, match="cannot load JWKS"):
        TokenVerifier(jwks="/nonexistent/jwks.json")


def test_bad_jwks_file_is_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    for text in ("not json", "[]", '{"keys": []}', '{"keys": [{"kty": "nope"}]}'):
        path.write_text(text)
        with pytest.raises(ValueError, match="cannot load JWKS"):
            TokenVerifier(jwks=str(path))


def test_issue_token_round_trips_and_validates_its_claims() -> None:
    now = time.time()
    token = issue_token(SECRET, "alice", "acme", ["issue/*"], "write", 60, aud="a", iss="i")
    principal = TokenVerifier([SECRET], audience="a", issuer="i").verify(token)
    assert principal == Principal(
        "acme", "alice", Grant(("issue/*",), "write"), principal.expires_at
    )
    assert principal.expires_at is not None and now + 55 <= principal.expires_at <= now + 61
    with pytest.raises(ValueError):
        issue_token(SECRET, "alice", mode="owner")
    with pytest.raises(ValueError):
        issue_token(SECRET, "", org="acme")
    with pytest.raises(ValueError):
        issue_token("short", "alice")


@pytest.mark.parametrize("sub", ["\ud800", "bob\x1b[31m", "a\u202eb", "a\u200db"])
def test_a_sub_that_names_may_not_hold_is_refused(sub: str) -> None:
    """The actor becomes ``who`` in stored frames and is named by revocation: a lone
    surrogate would make the store refuse the write after the doc changed."""
    token = jwt.encode(claims(sub=sub), SECRET, algorithm="HS256")
    assert reason(TokenVerifier([SECRET]), token) == "invalid_claims"
