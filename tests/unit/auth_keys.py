"""Test helpers: key pairs, JWKS documents, hand-made (forged) JWTs, a local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

SECRET = "s" * 32 + "-current"
OLD_SECRET = "o" * 32 + "-previous"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "sub": "alice",
        "org": "acme",
        "docs": ["issue/*"],
        "mode": "write",
        "exp": int(time.time()) + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = None) -> str:
    """A JWT built by hand: HMAC-SHA256 with ``key``, or unsigned (empty signature)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


class KeyPair:
    """A private key and its public JWK (with ``kid``)."""

    def __init__(self, kind: str, kid: str) -> None:
        self.kid = kid
        if kind == "rsa":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif kind == "ec":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif kind == "ec384":
            self.private = ec.generate_private_key(ec.SECP384R1())
            self.alg = "ES384"
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif kind == "ed25519":
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.alg = "EdDSA"
            jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            raise ValueError(kind)
        self.jwk = {**jwk, "kid": kid, "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: dict[str, Any], *, alg: str | None = None, kid: str | None = "") -> str:
        headers = {} if kid is None else {"kid": kid or self.kid}
        return jwt.encode(payload, self.private, algorithm=alg or self.alg, headers=headers)


def jwks(*pairs: KeyPair) -> dict[str, Any]:
    return {"keys": [p.jwk for p in pairs]}


@contextmanager
def http_server(
    handle: Callable[[str, bytes], tuple[int, bytes]],
) -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP server on 127.0.0.1 in a thread; yields (base URL, request bodies).

    ``handle(path, body) -> (status, body)`` answers every GET and POST.
    """
    seen: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append(body)
            status, answer = handle(self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; the server is ours

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
