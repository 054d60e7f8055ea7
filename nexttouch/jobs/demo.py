"""`nexttouch demo`: the whole path on the embedded default, ending in real HTTP decisions."""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd

from features.pipeline import build_offline, feast_apply
from nexttouch.catalog import Catalog
from nexttouch.ingest import ingest, summary
from nexttouch.jobs.online import load_online
from nexttouch.jobs.project import new_api_key
from nexttouch.registry_io import alias_version
from nexttouch.settings import Settings
from nexttouch.simulate import write_brand
from serving import server
from training.job import run_training


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def run_demo(settings: Settings, catalog: Catalog, end: datetime, keep_serving: bool | None = None) -> None:
    t = _step(f"1/4 simulate an OMO brand ({settings.customers:,} customers, {settings.days} days) and ingest it")
    brand = write_brand(settings, catalog, end, settings.landing_dir)
    print(
        f"   {len(brand.events):,} touch events from {brand.events['source_system'].nunique()} source systems, "
        f"{len(brand.decisions):,} logged decisions -> {settings.landing_dir}"
    )
    for line in summary(ingest(settings, catalog, settings.landing_dir)):
        print(f"   {line}")
    print(f"   ({time.monotonic() - t:.1f}s)")

    t = _step("2/4 touch history -> features -> Feast (DuckDB offline, SQLite online)")
    build = build_offline(settings, end, settings.days)
    feast_apply(settings)
    load_online(settings, datetime.now(UTC))
    print(f"   {build.rows:,} point-in-time snapshot rows; online store loaded ({time.monotonic() - t:.1f}s)")

    t = _step("3/4 point-in-time training set -> LightGBM -> MLflow (registry alias @champion)")
    report = run_training(settings, catalog, run_name="demo")
    m = report.metrics
    v = report.registered.version
    champion = alias_version(settings, settings.champion_alias)
    print(f"   {report.rows:,} decisions, valid AUC {m['valid_auc']:.3f}, log loss {m['valid_logloss']:.4f}")
    if report.promoted:
        print(f"   {settings.model_name} v{v} passed the gate and is @{settings.champion_alias}")
    else:
        print(f"   {settings.model_name} v{v} registered, not promoted: {report.verdict.reason}")
        print(f"   the service decides with v{champion} (@{settings.champion_alias})")
    print(f"   ({time.monotonic() - t:.1f}s)")

    t = _step(f"4/4 bentoml serve on http://{settings.host}:{settings.port} and real /decide calls")
    key = settings.service_key() or new_api_key(settings)
    proc = server.start(settings, settings.data_dir / "logs" / "demo-serve.log", api_key=key)
    url = f"http://{settings.host}:{settings.port}"
    try:
        print(f"   service ready ({time.monotonic() - t:.1f}s); API key in {_shown(settings.api_key_file)}")
        _show_decisions(url, key, brand.customers["customer_id"].head(200).tolist())
        print("\nWhere to look next:")
        print("   make ui                      MLflow UI over mlruns/ (runs, metrics, registry)")
        print(f"   {url}/            the service's OpenAPI page (spec: {url}/docs.json)")
        header = f'-H "X-API-Key: $(cat {_shown(settings.api_key_file)})"'
        serving_on = keep_serving if keep_serving is not None else sys.stdin.isatty()
        if not serving_on:
            print("   make serve                   the service again (it reads the project's API key file)")
        print(
            f"   curl -s -XPOST {url}/decide {header} -H 'content-type: application/json' "
            f'-d \'{{"customer_id": "C0000001"}}\''
        )
        print(f"   curl -s {url}/model {header}   the champion, catalog and feature service")
        if serving_on:
            print("\nService running; Ctrl-C to stop.")
            proc.wait()
        else:
            print("\nService stopped.")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(proc)


def _shown(path: Path) -> str:
    """A path as the user can type it: relative to where they are when it is below."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _show_decisions(url: str, key: str, customer_ids: list[str]) -> None:
    answers = []
    with httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": key}) as client:
        for cid in customer_ids:
            r = client.post("/decide", json={"customer_id": cid, "context": {"channel": "app"}})
            r.raise_for_status()
            answers.append(r.json())
        unknown = client.post("/decide", json={"customer_id": "C9999999"}).json()
        bad = client.post("/decide", json={"customer": 42})
    counts = Counter(a["action"] for a in answers)
    print(f"\n   {len(answers)} decisions: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    shown = {}
    for a in answers:
        shown.setdefault(a["action"], a)
    table = pd.DataFrame(
        [
            {
                "customer": a["customer_id"],
                "action": a["action"],
                "propensity": a["propensity"],
                **{f"value[{k}]": v for k, v in a["values"].items()},
                "cold start": a["cold_start"],
                "fallback": a.get("fallback"),
            }
            for a in [*shown.values(), unknown]
        ]
    )
    print("\n" + table.to_string(index=False))
    for a in [*shown.values(), unknown]:
        print(f"\n   {a['customer_id']} -> {a['action']} (decision {a['decision_id']}, model v{a['model_version']})")
        for reason in a["reasons"]:
            print(f"     - {reason}")
    print(f"\n   malformed body -> HTTP {bad.status_code}: {bad.text[:160]}")
