"""A customer's OpenID Connect ID token from the brand's CIAM -> the subject it vouches for.

The brand's app calls ``/decide`` on behalf of a signed-in customer with the ID token it got at login,
instead of a customer id. A token counts only when one of the CIAM's keys (its JWKS) signed it with an
asymmetric algorithm, it names the configured issuer and audience, and it is within its lifetime (give or
take ``oidc_leeway_s``). Its ``sub`` is then looked up in the identity map as a key of the CIAM's source
system, like any source key. Anything else is refused with the reason, never answered as a cold start.

Tokens carry personal claims (name, e-mail): neither a token nor its claims are logged or stored; a
refusal names the failed check, and only the issuer and audience, which are public.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt import PyJWK
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
    PyJWTError,
)

from nexttouch.settings import Settings, masked

# Asymmetric only: with an HMAC algorithm the CIAM's public key would serve as the shared secret, so
# anyone could sign; "none" signs nothing.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat")
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068: an access token, not an ID token
FETCH_TIMEOUT_S = 2.0
URL_MAX_AGE_S = 3600.0  # a key the CIAM withdrew stops counting within the hour
URL_REFETCH_S = 30.0  # tokens naming made-up keys cannot make the service hammer the CIAM
FILE_MAX_AGE_S = 1.0  # a file is stat()ed at most this often and read again only when it changed

log = logging.getLogger("nexttouch.serving")


class TokenRefused(ValueError):
    """The ID token is bad, expired or someone else's: a 401 that says why; ``check`` names the failed check
    in one word, for logs."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check


class TokenUnusable(ValueError):
    """The service cannot take ID tokens as configured: a 400 that says what is missing."""


class KeySetUnavailable(RuntimeError):
    """The CIAM's keys cannot be read, so no token can be checked: a 503, not the caller's fault."""


class KeySet:
    """The CIAM's public signing keys by key id (``kid``), from a JWKS file or URL.

    Read at first use; read again when it is older than its maximum age and when a token names a key it
    lacks (the CIAM rotated its keys), a URL at most every ``URL_REFETCH_S``. A failed read keeps the keys
    read before.
    """

    def __init__(self, where: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.shown = masked(where)  # for messages: a URL's password, if any, stays out of logs
        self.is_url = where.startswith(("https://", "http://"))
        self._max_age = URL_MAX_AGE_S if self.is_url else FILE_MAX_AGE_S
        self._refetch = URL_REFETCH_S if self.is_url else 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, PyJWK] | None = None
        self._checked: float | None = None
        self._stamp: tuple[int, int] | None = None
        self._error = "not read yet"

    def get(self, kid: str | None) -> PyJWK | None:
        """The key ``kid`` names (a token without kid: the only key, if there is one); None if there is none."""
        with self._lock:
            now = self._clock()
            if self._checked is None or now - self._checked >= self._max_age:
                self._refresh(now)
            key = self._match(kid)
            if key is None and now - self._checked >= self._refetch:
                self._refresh(now)
                key = self._match(kid)
            if self._keys is None:
                raise KeySetUnavailable(f"the CIAM's keys ({self.shown}) cannot be read: {self._error}")
            return key

    def refresh(self) -> bool:
        """Read the keys now (at start-up); False when they cannot be read."""
        with self._lock:
            self._refresh(self._clock())
            return self._keys is not None

    def _match(self, kid: str | None) -> PyJWK | None:
        keys = self._keys or {}
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _refresh(self, now: float) -> None:
        self._checked = now
        try:
            if self.is_url:
                self._keys = parse_jwks(_fetch(self.where))
            else:
                stat = os.stat(self.where)
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp or self._keys is None:
                    self._keys = parse_jwks(Path(self.where).read_text())
                    self._stamp = stamp
            self._error = ""
        except (OSError, httpx.HTTPError, ValueError) as exc:
            why, self._error = self._error, _why(exc)
            if why != self._error:  # once per failure, not once per token that meets it
                log.warning("CIAM keys not read from %s (%s); %s", self.shown, self._error, _kept(self._keys))


def _why(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):  # its message repeats the URL, which messages show masked
        return type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _kept(keys: dict | None) -> str:
    return "no keys yet: ID tokens get 503" if keys is None else f"the {len(keys)} keys read before stay in force"


def _fetch(url: str) -> str:
    answer = httpx.get(url, timeout=FETCH_TIMEOUT_S, headers={"Accept": "application/json"})
    answer.raise_for_status()
    return answer.text


def parse_jwks(text: str) -> dict[str | None, PyJWK]:
    """The signing keys of a JWKS document by kid; symmetric, encryption and unusable keys left out."""
    try:
        entries = json.loads(text)["keys"]
    except (ValueError, KeyError, TypeError):
        raise ValueError('not a JWKS document ({"keys": [...]})') from None
    keys: dict[str | None, PyJWK] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(entry)
        except (PyJWTError, ValueError, TypeError):
            continue  # a key type this library cannot use: tokens it signed are refused as unknown
        if key.algorithm_name not in ALGORITHMS:
            continue
        if weak := key.Algorithm.check_key_length(key.key):  # e.g. RSA below 2048 bits: forgeable
            log.warning("CIAM key %r left out: %s", entry.get("kid"), weak)
            continue
        keys[entry.get("kid")] = key
    if not keys:
        raise ValueError(f"no signing key with an algorithm among {', '.join(ALGORITHMS)}")
    return keys


class IdTokens:
    """Checks ID tokens of one CIAM; ``subject(token)`` is the customer it vouches for."""

    def __init__(self, issuer: str, audience: str, keys: KeySet, leeway_s: float, system: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.leeway_s = leeway_s
        self.system = system  # the identity map's source system of the CIAM's subjects

    @classmethod
    def from_settings(cls, settings: Settings) -> IdTokens | None:
        """The checker the settings configure; None when ID tokens are not configured."""
        if not (settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks and settings.oidc_system):
            return None
        keys = KeySet(settings.oidc_jwks)
        return cls(settings.oidc_issuer, settings.oidc_audience, keys, settings.oidc_leeway_s, settings.oidc_system)

    def subject(self, token: str) -> str:
        """The verified ``sub``; raises TokenRefused saying which check failed, KeySetUnavailable."""
        try:
            header = jwt.get_unverified_header(token)
        except DecodeError:
            raise TokenRefused("format", "not a signed JWT (header.payload.signature, base64url)") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRefused("algorithm", f"algorithm {alg!r} is not accepted; accepted: {', '.join(ALGORITHMS)}")
        if str(header.get("typ", "")).lower() in ACCESS_TOKEN_TYPES:
            raise TokenRefused("type", "this is an access token; send the ID token")
        kid = header.get("kid")
        key = self.keys.get(kid if isinstance(kid, str) else None)
        if key is None:
            named = f"key {kid!r}" if kid is not None else "no key id (kid)"
            raise TokenRefused("kid", f"signed with {named}, which is not among the CIAM's keys")
        claims = self._claims(token, key)
        azp = claims.get("azp")
        if azp is not None and azp != self.audience:  # OpenID Connect Core 3.1.3.7: issued to another client
            raise TokenRefused("azp", f"issued to another client (azp), not {self.audience!r}")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise TokenRefused("sub", "sub is not a non-empty string")
        return sub

    def _claims(self, token: str, key: PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except InvalidSignatureError:
            check, reason = "signature", "bad signature"
        except ExpiredSignatureError:
            check, reason = "expired", f"expired (exp is past, beyond the leeway of {self.leeway_s:g} s)"
        except ImmatureSignatureError:
            check = "not_yet_valid"
            reason = f"not valid yet (iat or nbf in the future, beyond the leeway of {self.leeway_s:g} s)"
        except InvalidIssuerError:
            check, reason = "issuer", f"issued by another issuer (iss), not {self.issuer!r}"
        except InvalidAudienceError:
            check, reason = "audience", f"issued for another audience (aud), not {self.audience!r}"
        except MissingRequiredClaimError as exc:
            check, reason = "claims", f"lacks the {exc.claim!r} claim"
        except InvalidIssuedAtError:
            check, reason = "claims", "iat is not a number"
        except InvalidAlgorithmError:
            check, reason = "algorithm", "its algorithm is not the one of the key that signs it"
        except DecodeError:
            check, reason = "format", "malformed (its payload is not a JSON object)"
        except InvalidTokenError as exc:  # PyJWT's own messages hold no claim values
            check, reason = "claims", f"invalid: {exc}"
        raise TokenRefused(check, reason)
