"""`nexttouch demo`: the whole path on the embedded default, ending in real HTTP decisions."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from datetime import UTC, datetime
from pathlib import Path

import httpx

from features.pipeline import build_offline, feast_apply
from nexttouch.catalog import Catalog
from nexttouch.ingest import ingest, summary
from nexttouch.jobs.online import load_online
from nexttouch.jobs.project import copy_feature_repo, new_api_key
from nexttouch.registry_io import alias_version
from nexttouch.settings import Settings
from nexttouch.simulate import write_brand
from serving import server
from training.job import run_training

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
INDENT = "      "


class _Activity(logging.Handler):
    """What the running step is doing, from the log records of our stages: the live line shows it, and the
    training job's step times are kept for the step's summary."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.now = ""
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "training.job" and record.msg == "step %s %s in %.2fs" and record.args:
            name, _outcome, seconds = record.args  # type: ignore[misc]
            self.seconds[str(name)] = float(seconds)
            self.now = ""
        elif record.name.split(".")[0] in {"nexttouch", "features", "training", "serving"}:
            self.now = record.getMessage().removeprefix("step ")


class Steps:
    """The demo's one output style: numbered steps with their time, indented result lines, and while a slow
    step runs on a terminal a live line with the time so far and what it is doing.

    Everything else (our job logs, third-party warnings and notices) goes to the demo's log file: the
    terminal shows what happened, the file how.
    """

    def __init__(self, total: int, log_file: Path) -> None:
        self.total, self.number = total, 0
        self.log_file = log_file
        self.live = sys.stdout.isatty()
        self.activity = _Activity()
        self._stop = threading.Event()
        self._out = threading.Lock()  # the live line and result lines are written whole, one at a time

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Logs and stderr (MLflow's notices, progress bars, warnings) into the log file while the demo runs."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        saved = root.handlers[:]
        with self.log_file.open("a") as out:
            handler = logging.StreamHandler(out)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            root.handlers = [handler, self.activity]
            logging.captureWarnings(True)
            try:
                with redirect_stderr(out):
                    yield
            finally:
                logging.captureWarnings(False)
                root.handlers = saved

    @contextmanager
    def step(self, title: str, status: Callable[[], str] | None = None, done: str = "done") -> Iterator[None]:
        """A numbered step: its title now, ``done`` and its time at the end; ``status`` (default: the latest
        log message) feeds the live line."""
        self.number += 1
        print(f"\n[{self.number}/{self.total}] {title}", flush=True)
        started = time.monotonic()
        self.activity.now = ""
        ticker = None
        if self.live:
            self._stop.clear()
            ticker = threading.Thread(target=self._tick, args=(started, status), daemon=True)
            ticker.start()
        try:
            yield
        finally:
            if ticker is not None:
                self._stop.set()
                ticker.join()
        print(f"{INDENT}{done} in {time.monotonic() - started:.1f}s", flush=True)

    def line(self, text: str) -> None:
        clear = "\r\033[K" if self.live else ""  # over the live line, which the next tick redraws below
        with self._out:
            sys.stdout.write(f"{clear}{INDENT}{text}\n")
            sys.stdout.flush()

    def doing(self, text: str) -> None:
        """What the live line says the step is doing, for steps whose work logs nothing."""
        self.activity.now = text

    def _tick(self, started: float, status: Callable[[], str] | None) -> None:
        width = max(40, shutil.get_terminal_size().columns - 1)
        while not self._stop.wait(0.5):
            doing = (status() if status else self.activity.now) or "working"
            with self._out:
                sys.stdout.write(f"\r\033[K{INDENT}{time.monotonic() - started:4.0f}s  {doing}"[: width + 4])
                sys.stdout.flush()
        with self._out:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()


def run_demo(settings: Settings, catalog: Catalog, end: datetime, keep_serving: bool | None = None) -> None:
    if not (settings.feature_repo / "feature_store.yaml").exists():  # a new directory: make it a project first
        copy_feature_repo(settings.project_dir)
    steps = Steps(4, settings.data_dir / "logs" / "demo.log")
    print(
        f"nexttouch demo: {settings.customers:,} simulated customers, {settings.days} days, "
        f"project {_shown(settings.project_dir)}\n(job logs and library notices go to {_shown(steps.log_file)})"
    )
    with steps.quiet():
        served, customers = _build(settings, catalog, end, steps)
        serve_log = settings.data_dir / "logs" / "demo-serve.log"
        url = f"http://{settings.host}:{settings.port}"
        key = settings.service_key() or new_api_key(settings)
        title = f"Serve it: bentoml serve on {url}, then real /decide calls"
        with steps.step(title, _serve_status(serve_log), done="ready (it answers /readyz)"):
            proc = server.start(settings, serve_log, api_key=key)
        try:
            steps.line(f"API key in {_shown(settings.api_key_file)}; service log {_shown(serve_log)}")
            _show_decisions(url, key, steps, served, customers)
            serving_on = keep_serving if keep_serving is not None else sys.stdin.isatty()
            print(f"\nThe demo took {_since_start():.0f}s. Where to look next:")
            header = f'-H "X-API-Key: $(cat {_shown(settings.api_key_file)})"'
            print(f"{INDENT}make ui                 MLflow UI over mlruns/ (runs, metrics, registry); open")
            print(f"{INDENT}                        http://127.0.0.1:5000/#/experiments?workflowType=machine_learning")
            print(f"{INDENT}{url}/   the service's OpenAPI page (spec: {url}/docs.json)")
            if not serving_on:
                print(f"{INDENT}make serve              the service again (it reads the project's API key file)")
            print(
                f"{INDENT}curl -s -XPOST {url}/decide {header} -H 'content-type: application/json' "
                f'-d \'{{"customer_id": "C0000001"}}\''
            )
            print(f"{INDENT}curl -s {url}/model {header}   the champion, catalog and feature service")
            if serving_on:
                print("\nService running; Ctrl-C to stop.", flush=True)
                proc.wait()
            else:
                print("\nService stopped.")
        except KeyboardInterrupt:
            pass
        finally:
            server.stop(proc)


def _build(settings: Settings, catalog: Catalog, end: datetime, steps: Steps) -> tuple[str, list[str]]:
    """Steps 1-3; returns the version the service decides with and the first 200 customers."""
    with steps.step("Simulate an OMO brand and ingest it as the brand's own data"):
        steps.doing("simulating the brand's customers and touches")
        brand = write_brand(settings, catalog, end, settings.landing_dir)
        steps.line(
            f"{brand.events:,} touch events from {brand.source_systems} source systems, "
            f"{brand.decisions:,} logged decisions -> {_shown(settings.landing_dir)}"
        )
        steps.doing("ingesting: validating, resolving identities")
        for line in summary(ingest(settings, catalog, settings.landing_dir)):
            steps.line(line)

    with steps.step("Touch history -> point-in-time features -> Feast (DuckDB offline, SQLite online)"):
        t = time.monotonic()
        steps.doing("building point-in-time snapshots of every customer's touch history")
        build = build_offline(settings, end, settings.days)
        steps.line(f"{build.rows:,} snapshot rows for {build.customers:,} customers ({time.monotonic() - t:.1f}s)")
        t = time.monotonic()
        steps.doing("feast apply: registering entities, sources, views and the feature service")
        feast_apply(settings)
        steps.line(f"feast apply ({time.monotonic() - t:.1f}s)")
        t = time.monotonic()
        steps.doing("loading the online store (and folding in touches posted to the service)")
        loaded = load_online(settings, datetime.now(UTC))
        moved = f"; {loaded.folded:,} contact states moved by touches posted earlier" if loaded.folded else ""
        steps.line(f"online store loaded{moved} ({time.monotonic() - t:.1f}s)")

    with steps.step("Training set -> LightGBM -> evaluation -> MLflow registry (alias @champion)"):
        steps.doing("opening the MLflow tracking store and starting the run")
        report = run_training(settings, catalog, run_name="demo")
        took = ", ".join(f"{name.replace('_', ' ')} {s:.1f}s" for name, s in steps.activity.seconds.items())
        steps.line(took)
        m = report.metrics
        v = report.registered.version
        champion = alias_version(settings, settings.champion_alias)
        steps.line(f"{report.rows:,} decisions, valid AUC {m['valid_auc']:.3f}, log loss {m['valid_logloss']:.4f}")
        if report.promoted:
            steps.line(f"{settings.model_name} v{v} passed the gate and is @{settings.champion_alias}")
        else:
            steps.line(f"{settings.model_name} v{v} registered, not promoted: {report.verdict.reason}")
            steps.line(f"the service decides with v{champion} (@{settings.champion_alias})")
    return str(champion), list(brand.first_customers)


def _since_start() -> float:
    """Seconds since this process started: what the user waited, imports included."""
    import psutil

    return time.time() - psutil.Process().create_time()


def _serve_status(log_file: Path) -> Callable[[], str]:
    def status() -> str:
        try:
            lines = log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        last = f" (log: {lines[-1].split('] ')[-1][:50]})" if lines else ""
        return "waiting for /readyz: the worker loads the champion and the Feast store" + last

    return status


def _shown(path: Path) -> str:
    """A path as the user can type it: relative to where they are when it is below."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _show_decisions(url: str, key: str, steps: Steps, version: str, customer_ids: list[str]) -> None:
    """Real calls: 200 customers, an unknown one and a malformed body; a table of one customer per action."""
    answers = []
    with httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": key}) as client:
        t = time.monotonic()
        for cid in customer_ids:
            r = client.post("/decide", json={"customer_id": cid, "context": {"channel": "app"}})
            r.raise_for_status()
            answers.append(r.json())
        took = time.monotonic() - t
        unknown = client.post("/decide", json={"customer_id": "C9999999"}).json()
        bad = client.post("/decide", json={"customer": 42})
    counts = Counter(a["action"] for a in answers)
    explored = sum(a["explored"] for a in answers)
    steps.line(
        f"{len(answers)} decisions in {took:.1f}s by v{version}: "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common())
        + f" ({explored} of them explored)"
    )
    shown: dict[str, dict] = {}
    for a in answers:  # one customer per action, an explored one too if any
        shown.setdefault(a["action"], a)
    if explored and not any(a["explored"] for a in shown.values()):
        first = next(a for a in answers if a["explored"])
        shown[f"{first['action']} explored"] = first
    rows = [*shown.values(), unknown]
    print()
    for line in decision_table(rows):
        print(f"{INDENT}{line}")
    for a in rows:
        print(
            f"\n{INDENT}{a['customer_id']} -> {a['action']} (decision {a['decision_id']}, model v{a['model_version']})"
        )
        for reason in a["reasons"]:
            print(f"{INDENT}  - {reason}")
    print(f"\n{INDENT}malformed body -> HTTP {bad.status_code}: {bad.text[:160]}")


def decision_table(answers: list[dict]) -> list[str]:
    """One line per answer: the chosen action (``*``: drawn by exploration), its propensity and every action's
    expected uplift over no contact, ``-`` where the action was not eligible; a legend under it.

    Uplift, not the raw values: each value counts its own success touch (none's is an app session the
    customer makes without contact), so only the difference to none compares across actions.
    """
    actions = list(dict.fromkeys(name for a in answers for name in a["uplift"]))
    width = 13 * len(actions) + len(actions) - 1
    title = "expected uplift over none"
    head = f"{'customer':<10} {'action':<15} {'propensity':>10}" + "".join(f" {name:>13}" for name in actions)
    over = f"{'':<37}" + (f" {title:^{width}}" if actions else "")
    lines = [over.rstrip(), head, "-" * len(head)]
    for a in answers:
        chosen = a["action"] + (" *" if a["explored"] else "")
        if a["cold_start"] or a.get("fallback"):
            chosen += " (fallback)" if a.get("fallback") else " (cold)"
        cells = []
        for name in actions:
            uplift = a["uplift"].get(name)
            cells.append(f" {uplift:>+13.2f}" if uplift is not None and name in a["eligible"] else f" {'-':>13}")
        lines.append(f"{a['customer_id'] or '?':<10} {chosen:<15} {a['propensity']:>10.3f}" + "".join(cells))
    lines += [
        "",
        "uplift: expected value of the action minus that of no contact (the answer's `uplift`; `values` and",
        "`p_success` hold its parts);  - : not eligible (the reasons say why);",
        "*: drawn at random by exploration (the propensity is the chance it had); otherwise the largest uplift.",
    ]
    return lines
