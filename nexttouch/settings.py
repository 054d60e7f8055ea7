"""One settings object for every stage: the project's profile file, then the environment, then explicit values.

Highest first: values passed to :func:`load_settings` (CLI options, tests), environment variables
``NEXTTOUCH_<NAME>``, the profile file ``<project dir>/nexttouch.toml`` (flat ``name = value``), defaults.
Secrets (the API key, passwords in URLs) come from the environment only: the file refuses them.
Nothing is read at import time: call :func:`load_settings`. All files live under one project directory
(the working directory by default), laid out as in DESIGN.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROFILE_FILE = "nexttouch.toml"
ENV_PREFIX = "NEXTTOUCH_"
SECRET_FIELDS = frozenset({"api_key"})
URL_FIELDS = frozenset(
    {"tracking_uri", "redis_url", "feast_registry_url", "decision_log_url", "dask_scheduler", "oidc_jwks"}
)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# user:password@ in a URL, or Redis' `password=` option in host:port,password=...
_URL_PASSWORD = re.compile(r"(?P<keep>://[^/@:\s]*:)[^/@\s]+(?=@)|(?P<opt>password=)[^,&\s]+")


class ProfileError(ValueError):
    """The profile file cannot be used: unreadable, an unknown name, or a secret in it."""


class Settings(BaseSettings):
    """Where data, features, runs and models live, and the knobs of each stage."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ProfileSource(settings_cls)

    project_dir: Path = Field(Path("."), description="Holds features/, data/, mlruns/, models/.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default SQLite under mlruns/.")
    catalog_path: Path | None = Field(None, description="Action catalog YAML; default: the packaged one.")

    model_name: str = Field(
        "",
        description="Registered model name; default nexttouch-<catalog file>-<hash of its action names>, one "
        "per catalog, so a brand's first model never meets the champion of another catalog.",
    )
    champion_alias: str = "champion"
    feature_service: str = Field("nexttouch_v1", description="Feast FeatureService the model uses.")
    online_store: Literal["sqlite", "redis"] = Field("sqlite", description="Feast online store profile.")
    redis_url: str = Field("127.0.0.1:6379", description="Redis host:port[,db=N] for the redis profile.")
    feast_registry_url: str | None = Field(
        None,
        description="postgresql://... for Feast's SQL registry, shared by every replica and the nightly job "
        "(redis profile only); default: the file data/feast/registry.redis.db.",
    )

    seed: int = 7
    customers: int = Field(5_000, gt=0)
    days: int = Field(180, gt=14)
    snapshot_every_days: int = Field(
        1,
        ge=1,
        le=7,
        description="Feature snapshot spacing: 7 for millions of customers (rows = customers x days / N).",
    )
    decision_rate: float = Field(0.08, gt=0, le=1, description="Daily chance a customer gets a decision.")

    data_memory_gib: float = Field(
        4.0,
        gt=0,
        description="Memory budget of the data steps (simulate, ingest, features): they work a slice of the "
        "customers at a time, as many as fit in it, so peak memory does not grow with the number of customers.",
    )
    data_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="Partitions a data step (ingest, features) works on at once in this process, on threads "
        "that share the memory budget: about one per core. Not used on a Dask cluster, whose workers run them.",
    )
    training_decisions: int = Field(
        5_000_000,
        gt=0,
        description="The most decisions training reads: the latest (and any decided at the same time as the "
        "last of them). Bounds the training job's memory and time however long the decision log grows.",
    )
    dask_scheduler: str | None = Field(
        None,
        description="Dask scheduler address (tcp://host:8786): train LightGBM and run the data steps' partitions "
        "(ingest, features) on that cluster; local if unset.",
    )
    epsilon: float = Field(0.05, ge=0, lt=1, description="Share of decisions chosen at random.")
    affinity_prior_sd: Annotated[float, Field(ge=0, le=5)] | Literal["fitted"] = Field(
        0.0,
        description="Per-customer learning: prior sd of each customer's own affinity per action (log-odds); "
        "> 0 makes feedback and attributed events update it at once and decisions sample it (Thompson); "
        "'fitted': the spread the champion's training found per action; 0: off.",
    )
    affinity_sampling: bool = Field(
        False,
        description="Per-customer learning decides on a posterior draw (Thompson sampling) instead of the "
        "posterior mean; exploration is then the posterior's (it cost value in closed loop: docs/benchmarks.md).",
    )
    gate_tolerance: float = Field(
        0.15,
        ge=0,
        description="Promotion gate: how much worse per decision (catalog value units) the 95% lower bound of a "
        "candidate's paired difference may be, when it is better in expectation (benchmarks/bench_gate.py).",
    )
    reason_contributions: Literal["path", "shap"] = Field(
        "path",
        description="Feature contributions in reasons: along the decision path (fast) or TreeSHAP (~10x slower).",
    )
    max_rejected_share: float = Field(
        0.05, ge=0, le=1, description="Nightly retraining stops when ingest rejects more of any table than this."
    )
    default_time_zone: str = Field(
        "UTC", description="IANA time zone for quiet hours when a customer's profile has no time_zone."
    )
    host: str = "127.0.0.1"
    port: int = 3000
    request_timeout_s: int = Field(5, gt=0, description="BentoML traffic timeout (short: see docs/production.md).")
    api_key: SecretStr | None = Field(
        None,
        description="Key every service call but health must send as X-API-Key (default: the project's key file, "
        "data/api_key, which `nexttouch demo` writes).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="Clients' API keys with their scopes, stored as SHA-256 hashes (default: data/api_keys.toml; "
        "see serving/auth.py); read again when it changes.",
    )
    oidc_issuer: str | None = Field(
        None,
        description="The brand's CIAM (OpenID Connect issuer, exactly as the `iss` of its ID tokens): /decide "
        "accepts a customer's ID token instead of an id; unset: tokens are refused.",
    )
    oidc_audience: str | None = Field(
        None, description="The client id of the brand's app: an ID token's `aud` must name it."
    )
    oidc_jwks: str | None = Field(
        None,
        description="The CIAM's signing keys (JWKS): a file path or an https URL (http only on loopback); "
        "cached, read again when a token names an unknown key.",
    )
    oidc_leeway_s: int = Field(30, ge=0, le=300, description="Clock skew allowed on an ID token's exp, iat, nbf.")
    oidc_source_system: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:@\-]+$",
        description="The identity map's source system whose keys are the CIAM's `sub` values (default: the "
        "issuer's host, e.g. login.brand.example).",
    )
    workers: int = Field(1, ge=1, description="Service worker processes (one per core).")
    shutdown_timeout_s: int = Field(
        10,
        gt=0,
        description="On SIGTERM/SIGINT the service stops taking requests and lets in-flight ones finish for at "
        "most this long; then every process of the server is killed.",
    )
    access_log: bool = Field(False, description="One line per request in the service log (BentoML's access log).")
    request_tracing: bool = Field(
        False, description="An OpenTelemetry span per request (configure the exporter in BentoML's configuration)."
    )
    at_window_hours: float = Field(
        24.0,
        gt=0,
        description="How far a decision's `at` may be from the server's clock, either way (400 beyond): "
        "decisions far in the past would land in training, far in the future would spend future capacity.",
    )
    max_event_age_days: int = Field(
        730, ge=1, description="Oldest touch event POST /events takes (400 beyond); load older ones with ingest."
    )
    log_wait_margin_s: float = Field(
        1.0,
        gt=0,
        description="A decision-log write still waiting for the log's lock this long before the request's "
        "timeout gives up with a 503 and leaves no trace (the client never gets a 504 for committed work).",
    )
    max_header_bytes: int = Field(16 * 2**10, ge=1024, description="Largest total of request headers (431 above).")
    batch_limit: int = Field(1000, ge=1, description="Most customers in one POST /decide/batch.")
    max_body_bytes: int = Field(
        2 * 2**20, ge=1024, description="Largest request body the service reads (413 above); raise with batch_limit."
    )
    online_timeout_ms: int = Field(250, gt=0, description="Online feature read slower than this: rule-based fallback.")
    champion_poll_s: float = Field(10.0, gt=0, description="How often the service checks the champion alias.")
    decision_log_url: str | None = Field(
        None, description="postgresql://... for a PostgreSQL decision log; default SQLite data/decisions.db."
    )

    @model_validator(mode="after")
    def _model_per_catalog(self) -> Settings:
        if not self.model_name:  # frozen: set once, here
            object.__setattr__(self, "model_name", default_model_name(self.catalog_path))
        return self

    @model_validator(mode="after")
    def _shared_registry_with_shared_store(self) -> Settings:
        if self.feast_registry_url and self.online_store != "redis":
            # A registry shared by hosts would describe online tables that live in one host's SQLite file.
            raise ValueError("feast_registry_url needs the redis online store: set NEXTTOUCH_ONLINE_STORE=redis")
        return self

    @property
    def feature_repo(self) -> Path:
        """The Feast feature repository; its data lives beside it in data/."""
        return self.project_dir.resolve() / "features"

    @property
    def api_key_file(self) -> Path:
        """The project's own API key (mode 600), for a service started without NEXTTOUCH_API_KEY."""
        return self.data_dir / "api_key"

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        given = {n: getattr(self, n) for n in ("oidc_issuer", "oidc_audience", "oidc_jwks")}
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(f"{ENV_PREFIX}{n.upper()}" for n, v in given.items() if not v)
            raise ValueError(f"ID tokens need the CIAM's issuer, audience and keys together: set {missing}")
        jwks = self.oidc_jwks or ""
        if jwks.startswith("http://") and urlsplit(jwks).hostname not in LOOPBACK:
            raise ValueError("oidc_jwks must be an https URL (or a file): keys fetched in clear text can be swapped")
        return self

    @property
    def oidc_system(self) -> str | None:
        """The source system ID tokens' subjects resolve under; None when tokens are not configured."""
        if not self.oidc_issuer:
            return None
        return self.oidc_source_system or urlsplit(self.oidc_issuer).hostname or self.oidc_issuer

    def service_key(self) -> str | None:
        """NEXTTOUCH_API_KEY, else the project's key file, else None."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        path = self.api_key_file
        return path.read_text().strip() or None if path.exists() else None

    @property
    def data_dir(self) -> Path:
        return self.project_dir.resolve() / "data"

    @property
    def mlruns_dir(self) -> Path:
        """MLflow tracking database and artifacts."""
        return self.project_dir.resolve() / "mlruns"

    @property
    def models_dir(self) -> Path:
        """Local copies of registered models that serving loads."""
        return self.project_dir.resolve() / "models"

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.mlruns_dir / "artifacts").as_uri()

    @property
    def decision_log(self) -> Path:
        """SQLite decision log of the service (embedded default)."""
        return self.data_dir / "decisions.db"

    @property
    def landing_dir(self) -> Path:
        """Where tables arrive before `nexttouch ingest` (the simulator writes here)."""
        return self.data_dir / "landing"

    @property
    def quarantine_dir(self) -> Path:
        """Rejected rows, each with the reason it was rejected."""
        return self.data_dir / "quarantine"

    @property
    def raw_dir(self) -> Path:
        """Validated input tables (events, customers, identity map, decisions)."""
        return self.data_dir / "raw"

    @property
    def offline_dir(self) -> Path:
        """Parquet files read by Feast's DuckDB offline store."""
        return self.data_dir / "offline"


def catalog_key(catalog_path: Path | None) -> str:
    """``<catalog file stem>-<hash of its action names>``: a catalog whose actions change is another catalog,
    even under the same file name."""
    from nexttouch.catalog import load_catalog

    names = load_catalog(catalog_path).names
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", catalog_path.stem) if catalog_path else "catalog"
    return f"{stem}-{hashlib.sha256(','.join(names).encode()).hexdigest()[:8]}"


def default_model_name(catalog_path: Path | None) -> str:
    """The registered model a catalog's models go to unless NEXTTOUCH_MODEL_NAME names one."""
    return f"nexttouch-{catalog_key(catalog_path)}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the profile file and the environment, with explicit overrides (CLI options, tests) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)


def profile_path(project_dir: Path | str | None) -> Path:
    """The profile file of a project directory (the working directory when None)."""
    return Path(project_dir if project_dir is not None else ".").resolve() / PROFILE_FILE


def read_profile(path: Path) -> dict[str, Any]:
    """The settings in a profile file ({} when there is none); raises ProfileError for what it must not hold."""
    if not path.is_file():
        return {}
    try:
        values = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    for name, value in values.items():
        env = f"{ENV_PREFIX}{name.upper()}"
        if name not in Settings.model_fields:
            raise ProfileError(f"{path}: unknown setting {name!r} (see docs/configuration.md)")
        if name == "project_dir":
            raise ProfileError(f"{path}: project_dir cannot be set in the file that lives in the project directory")
        if name in SECRET_FIELDS:
            raise ProfileError(f"{path}: {name} is a secret: set {env} in the environment, not in a file")
        if name in URL_FIELDS and isinstance(value, str) and masked(value) != value:
            raise ProfileError(
                f"{path}: {name} holds a password: set {env} in the environment (for PostgreSQL, "
                "PGPASSWORD or ~/.pgpass also work) and keep the URL in the file without it"
            )
    return values


def masked(value: str) -> str:
    """``value`` with any password in it replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: (m["keep"] or m["opt"]) + "***", value)


def shown(name: str, value: object) -> str:
    """A setting's value as a TOML value, secrets and passwords masked; None for an unset one."""
    if value is None:
        return "none"
    if isinstance(value, SecretStr):
        return '"***"' if value.get_secret_value() else '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    text = str(value.resolve()) if isinstance(value, Path) else str(value)
    return json.dumps(masked(text) if name in URL_FIELDS else text)


def sources(overrides: dict[str, object]) -> dict[str, str]:
    """Where each setting's effective value comes from: cli, env, file or default (as ``load_settings`` reads)."""
    env = {k.upper() for k in os.environ}
    project = overrides.get("project_dir") or os.environ.get(f"{ENV_PREFIX}PROJECT_DIR")
    in_file = read_profile(profile_path(project))  # type: ignore[arg-type]
    found = {}
    for name in Settings.model_fields:
        if overrides.get(name) is not None:
            found[name] = "cli"
        elif f"{ENV_PREFIX}{name.upper()}" in env:
            found[name] = "env"
        else:
            found[name] = "file" if name in in_file else "default"
    return found


class _ProfileSource(PydanticBaseSettingsSource):
    """The profile file, below the environment: its project directory is the one the sources above chose."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        return read_profile(profile_path(self.current_state.get("project_dir")))
