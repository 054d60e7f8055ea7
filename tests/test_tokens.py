"""Customers' ID tokens from the brand's CIAM: the checks, the key set's caching, the settings, the lookup."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import ValidationError

from nexttouch.api import CustomerRef, DecideBatchRequest
from nexttouch.settings import load_settings
from serving import tokens
from serving.decisions import Decisions
from serving.tokens import IdTokens, KeySet, KeySetUnavailable, TokenRefused, TokenUnusable, parse_jwks
from tests.ciam import AUDIENCE, ISSUER, Ciam

JWKS_PORT = 3037


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ciam() -> Ciam:
    return Ciam()


@pytest.fixture(scope="module")
def stranger() -> Ciam:
    """Another party with keys of the same names: its tokens must not pass as the brand's."""
    return Ciam()


@pytest.fixture
def checker(ciam: Ciam, tmp_path: Path) -> IdTokens:
    return IdTokens(ISSUER, AUDIENCE, KeySet(str(ciam.write_jwks(tmp_path / "jwks.json"))), 30, "ciam")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(ciam: Ciam, sub: str) -> str:
    head = _b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    return f"{head}.{_b64(json.dumps(ciam.claims(sub)).encode())}."


def _hs256_with_public_key(ciam: Ciam, sub: str) -> str:
    """The classic forgery: HMAC keyed with the CIAM's public key, which anyone can fetch."""
    public = (
        ciam.keys["rsa-1"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    signing_input = f"{head}.{_b64(json.dumps(ciam.claims(sub)).encode())}"
    return f"{signing_input}.{_b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())}"


def _tampered(ciam: Ciam, sub: str) -> str:
    head, _, signature = ciam.token("someone-else").split(".")
    return f"{head}.{_b64(json.dumps(ciam.claims(sub)).encode())}.{signature}"


def test_tokens_signed_by_the_ciam_give_their_subject(ciam: Ciam, checker: IdTokens) -> None:
    assert checker.subject(ciam.token("app-0001")) == "app-0001"
    assert checker.subject(ciam.token("app-0002", kid="ec-1")) == "app-0002"
    several = ciam.token("app-0003", aud=[AUDIENCE, "brand-web"], azp=AUDIENCE)
    assert checker.subject(several) == "app-0003"


def now() -> int:
    """The clock when a token is signed (not at import: a long test run would age the tokens)."""
    return int(time.time())


FORGED: list[tuple[str, Callable[[Ciam, Ciam], str], str]] = [
    ("expired", lambda c, s: c.token("a", iat=now() - 900, exp=now() - 120), "expired (exp is past"),
    ("not yet valid", lambda c, s: c.token("a", iat=now() + 600, exp=now() + 900), "not valid yet"),
    ("foreign issuer", lambda c, s: c.token("a", iss="https://login.other.example/"), "issued by another issuer"),
    ("foreign audience", lambda c, s: c.token("a", aud="other-app"), "issued for another audience"),
    ("other client", lambda c, s: c.token("a", aud=[AUDIENCE, "x"], azp="x"), "issued to another client (azp)"),
    ("no expiry", lambda c, s: c.token("a", exp=None), "lacks the 'exp' claim"),
    ("no subject", lambda c, s: c.token("a", sub=None), "lacks the 'sub' claim"),
    ("stranger's key", lambda c, s: s.token("a"), "bad signature"),
    ("stranger's EC key", lambda c, s: s.token("a", kid="ec-1"), "bad signature"),
    ("tampered claims", lambda c, s: _tampered(c, "a"), "bad signature"),
    (
        "unknown kid",
        lambda c, s: jwt.encode(c.claims("a"), c.keys["rsa-1"][0], "RS256", {"kid": "rsa-9"}),
        "key 'rsa-9'",
    ),
    ("alg none", lambda c, s: _unsigned(c, "a"), "algorithm 'none' is not accepted"),
    ("HS256 with the public key", lambda c, s: _hs256_with_public_key(c, "a"), "algorithm 'HS256' is not accepted"),
    (
        "alg not the key's",
        lambda c, s: jwt.encode(c.claims("a"), c.keys["rsa-1"][0], "RS384", {"kid": "rsa-1"}),
        "not the one of the key",
    ),
    ("access token", lambda c, s: c.token("a", headers={"typ": "at+jwt"}), "access token"),
    ("not a JWT", lambda c, s: "not-a-token", "not a signed JWT"),
]


@pytest.mark.parametrize(("make", "needle"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_bad_expired_and_foreign_tokens_are_refused_with_the_reason(
    ciam: Ciam, stranger: Ciam, checker: IdTokens, make: Callable[[Ciam, Ciam], str], needle: str
) -> None:
    with pytest.raises(TokenRefused) as refused:
        checker.subject(make(ciam, stranger))
    assert needle in str(refused.value)


def test_leeway_allows_small_clock_skew_only(ciam: Ciam, tmp_path: Path) -> None:
    keys = KeySet(str(ciam.write_jwks(tmp_path / "jwks.json")))
    just_expired = ciam.token("a", iat=now() - 300, exp=now() - 10)
    assert IdTokens(ISSUER, AUDIENCE, keys, 30, "ciam").subject(just_expired) == "a"
    with pytest.raises(TokenRefused, match="leeway of 5 s"):
        IdTokens(ISSUER, AUDIENCE, keys, 5, "ciam").subject(just_expired)


def test_a_key_file_is_read_again_when_a_token_names_a_new_key(tmp_path: Path) -> None:
    ciam, clock = Ciam(), Clock()
    path = ciam.write_jwks(tmp_path / "jwks.json", "rsa-1")
    checker = IdTokens(ISSUER, AUDIENCE, KeySet(str(path), clock), 30, "ciam")
    assert checker.subject(ciam.token("a")) == "a"
    ciam.add_key("rsa-2", "RS256")
    with pytest.raises(TokenRefused, match="key 'rsa-2', which is not among"):
        checker.subject(ciam.token("b", kid="rsa-2"))
    ciam.write_jwks(path, "rsa-1", "rsa-2")  # the CIAM rotates: the new key is published
    assert checker.subject(ciam.token("b", kid="rsa-2")) == "b"
    ciam.write_jwks(path, "rsa-2")  # ... and the old one withdrawn
    assert checker.subject(ciam.token("a")) == "a"  # within the file's maximum age, as cached
    clock.now += tokens.FILE_MAX_AGE_S
    with pytest.raises(TokenRefused, match="key 'rsa-1', which is not among"):
        checker.subject(ciam.token("a"))


def test_url_keys_are_cached_and_fetched_again_on_an_unknown_kid_at_most_every_30_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ciam, clock = Ciam(), Clock()
    published = {"kids": ("rsa-1",)}
    fetched: list[str] = []

    def fetch(url: str) -> str:
        fetched.append(url)
        return json.dumps(ciam.jwks(*published["kids"]))

    monkeypatch.setattr(tokens, "_fetch", fetch)
    checker = IdTokens(ISSUER, AUDIENCE, KeySet("https://login.brand.example/jwks", clock), 30, "ciam")
    for _ in range(3):
        assert checker.subject(ciam.token("a")) == "a"
    assert len(fetched) == 1
    ciam.add_key("rsa-2", "RS256")
    published["kids"] = ("rsa-1", "rsa-2")
    clock.now += 5
    for _ in range(3):  # made-up or new kids cannot make the service fetch again and again
        with pytest.raises(TokenRefused, match="key 'rsa-2'"):
            checker.subject(ciam.token("b", kid="rsa-2"))
    assert len(fetched) == 1
    clock.now += tokens.URL_REFETCH_S
    assert checker.subject(ciam.token("b", kid="rsa-2")) == "b"
    assert len(fetched) == 2
    published["kids"] = ("rsa-2",)
    clock.now += tokens.URL_MAX_AGE_S  # a withdrawn key stops counting once the cache is old
    with pytest.raises(TokenRefused, match="key 'rsa-1'"):
        checker.subject(ciam.token("a"))
    assert len(fetched) == 3


def test_a_failed_fetch_keeps_the_keys_and_no_keys_at_all_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ciam, clock = Ciam(), Clock()
    answers: list[object] = [json.dumps(ciam.jwks()), httpx.ConnectError("down")]

    def fetch(_url: str) -> str:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    monkeypatch.setattr(tokens, "_fetch", fetch)
    keys = KeySet("https://login.brand.example/jwks", clock)
    checker = IdTokens(ISSUER, AUDIENCE, keys, 30, "ciam")
    assert checker.subject(ciam.token("a")) == "a"
    for _ in range(2):
        clock.now += tokens.URL_MAX_AGE_S
        with caplog.at_level("WARNING", logger="nexttouch.serving"):
            assert checker.subject(ciam.token("a")) == "a"  # the CIAM is down: the keys read before still count
    assert [r.getMessage() for r in caplog.records] == [
        "CIAM keys not read from https://login.brand.example/jwks (ConnectError); the 2 keys read before stay in force"
    ]
    never = KeySet("https://login.brand.example/jwks", clock)
    assert never.refresh() is False
    with pytest.raises(KeySetUnavailable, match="ConnectError"):
        IdTokens(ISSUER, AUDIENCE, never, 30, "ciam").subject(ciam.token("a"))
    with pytest.raises(KeySetUnavailable, match="FileNotFoundError"):
        IdTokens(ISSUER, AUDIENCE, KeySet("/no/such/jwks.json"), 30, "ciam").subject(ciam.token("a"))


@pytest.fixture
def jwks_server(ciam: Ciam) -> Iterator[str]:
    body = json.dumps(ciam.jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/jwks" else 404)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", JWKS_PORT), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{JWKS_PORT}"
    finally:
        server.shutdown()
        server.server_close()


def test_keys_are_fetched_from_a_url(ciam: Ciam, jwks_server: str) -> None:
    checker = IdTokens(ISSUER, AUDIENCE, KeySet(f"{jwks_server}/jwks"), 30, "ciam")
    assert checker.keys.refresh() is True
    assert checker.subject(ciam.token("a", kid="ec-1")) == "a"
    missing = KeySet(f"{jwks_server}/missing")
    assert missing.refresh() is False
    with pytest.raises(KeySetUnavailable, match="cannot be read: HTTP 404"):
        missing.get("rsa-1")


def test_the_key_set_leaves_out_symmetric_encryption_and_weak_keys(ciam: Ciam) -> None:
    weak = rsa.generate_private_key(65537, 1024).public_key()
    document = ciam.jwks()
    document["keys"] += [
        {"kty": "oct", "k": _b64(b"secret" * 6), "kid": "hmac", "alg": "HS256"},
        {**ciam.jwks("rsa-1")["keys"][0], "kid": "enc-1", "use": "enc"},
        {**RSAAlgorithm.to_jwk(weak, as_dict=True), "kid": "weak", "alg": "RS256"},
        {"kty": "nonsense", "kid": "junk"},
    ]
    assert set(parse_jwks(json.dumps(document))) == {"rsa-1", "ec-1"}
    with pytest.raises(ValueError, match="no signing key"):
        parse_jwks(json.dumps({"keys": document["keys"][2:]}))
    with pytest.raises(ValueError, match="not a JWKS document"):
        parse_jwks("[]")


def test_a_token_without_kid_needs_a_key_set_of_one(ciam: Ciam, tmp_path: Path) -> None:
    key = ciam.keys["rsa-1"][0]
    no_kid = jwt.encode(ciam.claims("a"), key, algorithm="RS256")
    one = IdTokens(ISSUER, AUDIENCE, KeySet(str(ciam.write_jwks(tmp_path / "one.json", "rsa-1"))), 30, "ciam")
    assert one.subject(no_kid) == "a"
    two = IdTokens(ISSUER, AUDIENCE, KeySet(str(ciam.write_jwks(tmp_path / "two.json"))), 30, "ciam")
    with pytest.raises(TokenRefused, match="no key id"):
        two.subject(no_kid)


def test_settings_take_the_ciam_whole_and_its_keys_over_https(tmp_path: Path) -> None:
    base = {"project_dir": tmp_path, "oidc_issuer": ISSUER, "oidc_audience": AUDIENCE}
    assert load_settings(project_dir=tmp_path).oidc_system is None
    assert IdTokens.from_settings(load_settings(project_dir=tmp_path)) is None
    with pytest.raises(ValidationError, match="set NEXTTOUCH_OIDC_JWKS"):
        load_settings(**base)
    with pytest.raises(ValidationError, match="https URL"):
        load_settings(**base, oidc_jwks="http://login.brand.example/jwks")
    settings = load_settings(**base, oidc_jwks="https://login.brand.example/jwks")
    assert settings.oidc_system == "login.brand.example"
    assert load_settings(**base, oidc_jwks="http://127.0.0.1:8080/jwks", oidc_source_system="app").oidc_system == "app"
    checker = IdTokens.from_settings(settings)
    assert checker is not None and (checker.issuer, checker.audience, checker.system) == (
        ISSUER,
        AUDIENCE,
        "login.brand.example",
    )
    assert checker.keys.is_url and checker.leeway_s == 30


def test_exactly_one_identity_in_a_request() -> None:
    assert CustomerRef(id_token="a.b.c").id_token == "a.b.c"
    for both in (
        {"id_token": "a.b.c", "customer_id": "C1"},
        {"id_token": "a.b.c", "source": {"system": "app", "key": "k"}},
    ):
        with pytest.raises(ValidationError, match="exactly one of customer_id or source"):
            CustomerRef.model_validate(both)
    with pytest.raises(ValidationError, match="id_token"):
        CustomerRef(id_token="")
    batch = DecideBatchRequest.model_validate({"customers": [{"id_token": "a.b.c"}, {"customer_id": "C1"}]})
    assert [c.id_token for c in batch.customers] == ["a.b.c", None]


def _decisions(checker: IdTokens | None, keys: dict[tuple[str, str], str]) -> Decisions:
    """Only identity is exercised: no engine, store or log is reached."""
    systems = frozenset({"api", *(s for s, _ in keys)})
    return Decisions(None, None, lambda s, k: keys.get((s, k)), None, None, 1.0, 1.0, systems, checker)  # type: ignore[arg-type]


def test_the_subject_resolves_under_the_ciams_source_system(ciam: Ciam, checker: IdTokens) -> None:
    decisions = _decisions(checker, {("ciam", "app-0001"): "C0000001", ("app", "app-0002"): "C0000002"})
    assert decisions.customer_id(CustomerRef(id_token=ciam.token("app-0001"))) == "C0000001"
    assert decisions.customer_id(CustomerRef(id_token=ciam.token("app-0002"))) is None  # a key of another system
    with pytest.raises(TokenRefused, match="expired"):  # refused before any lookup: never a cold start
        decisions.customer_id(CustomerRef(id_token=ciam.token("app-0001", iat=now() - 900, exp=now() - 300)))


def test_tokens_not_configured_or_unmapped_say_so(ciam: Ciam, checker: IdTokens) -> None:
    token = CustomerRef(id_token=ciam.token("app-0001"))
    with pytest.raises(TokenUnusable, match="takes no ID tokens: NEXTTOUCH_OIDC_ISSUER"):
        _decisions(None, {("ciam", "app-0001"): "C0000001"}).customer_id(token)
    with pytest.raises(TokenUnusable, match="no key of source system 'ciam'"):
        _decisions(checker, {("app", "app-0001"): "C0000001"}).customer_id(token)
