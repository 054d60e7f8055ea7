"""A brand's CIAM for tests: keys of its own, their JWKS, and ID tokens signed with them (no network)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://login.brand.example/"
AUDIENCE = "brand-app"


class Ciam:
    """Signs ID tokens as the brand's CIAM would: RS256 with ``rsa-1``, ES256 with ``ec-1``."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer, self.audience = issuer, audience
        self.keys: dict[str, tuple[Any, str]] = {}
        self.add_key("rsa-1", "RS256")
        self.add_key("ec-1", "ES256")

    def add_key(self, kid: str, alg: str, bits: int = 2048) -> None:
        key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, bits)
        self.keys[kid] = (key, alg)

    def jwks(self, *kids: str) -> dict[str, list[dict]]:
        """The public keys (all, or those named) as the CIAM publishes them."""
        out = []
        for kid in kids or tuple(self.keys):
            key, alg = self.keys[kid]
            algorithm = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
            out.append({**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": out}

    def write_jwks(self, path: Path, *kids: str) -> Path:
        path.write_text(json.dumps(self.jwks(*kids)))
        return path

    def claims(self, sub: str, /, **changes: Any) -> dict[str, Any]:
        """Valid claims for ``sub``, issued now for five minutes; a change to None drops that claim."""
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now, "exp": now + 300}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str, /, kid: str = "rsa-1", headers: dict | None = None, **changes: Any) -> str:
        key, alg = self.keys[kid]
        return jwt.encode(self.claims(sub, **changes), key, algorithm=alg, headers={"kid": kid, **(headers or {})})
