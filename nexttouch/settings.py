"""One settings object for every stage, read from the environment (prefix ``NEXTTOUCH_``).

Nothing is read at import time: call :func:`load_settings`. All files live under one
project directory (the working directory by default), laid out as in DESIGN.md.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where data, features, runs and models live, and the knobs of each stage."""

    model_config = SettingsConfigDict(env_prefix="NEXTTOUCH_", extra="forbid", frozen=True)

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

    dask_scheduler: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786): train LightGBM on that cluster; local if unset."
    )
    epsilon: float = Field(0.05, ge=0, lt=1, description="Share of decisions chosen at random.")
    affinity_prior_sd: float = Field(
        0.0,
        ge=0,
        le=5,
        description="Per-customer learning: prior sd of each customer's own affinity per action (log-odds); "
        "> 0 makes feedback and attributed events update it at once and decisions sample it (Thompson); 0: off.",
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
    workers: int = Field(1, ge=1, description="Service worker processes (one per core).")
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

    @property
    def feature_repo(self) -> Path:
        """The Feast feature repository; its data lives beside it in data/."""
        return self.project_dir.resolve() / "features"

    @property
    def api_key_file(self) -> Path:
        """The project's own API key (mode 600), for a service started without NEXTTOUCH_API_KEY."""
        return self.data_dir / "api_key"

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
    """Settings from the environment, with explicit overrides (CLI options, tests) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
