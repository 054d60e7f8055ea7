"""The one command line: `nexttouch simulate | ingest | features | train | plan | retrain | whatif | serve | ...`.

Each command imports the stack it needs when it runs: Feast, MLflow, BentoML and LightGBM take seconds
to import, and `nexttouch --help` must not pay for them (tests/test_cli.py).
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TextIO

import typer

from nexttouch.catalog import load_catalog
from nexttouch.settings import Settings, load_settings
from nexttouch.telemetry import switch_off

app = typer.Typer(help="nexttouch: the next best contact for every customer.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"nexttouch {version('nexttouch')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """nexttouch: the next best contact for every customer."""


ProjectOpt = Annotated[Path | None, typer.Option(help="Project directory (features/, data/, mlruns/, models/).")]
CatalogOpt = Annotated[Path | None, typer.Option(help="Action catalog YAML (default: the packaged catalog).")]


def _settings(project_dir: Path | None, catalog: Path | None, **more: object) -> Settings:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for ours in ("nexttouch", "features", "training", "serving"):
        logging.getLogger(ours).setLevel(logging.INFO)
    _quiet_libraries()
    switch_off()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # job logs, not progress bars
    return load_settings(project_dir=project_dir, catalog_path=catalog, **more)


_OURS = warnings.showwarning


def _quiet_libraries() -> None:
    """Keep notices meant for the libraries' developers out of a user's terminal.

    Feast sets the DeprecationWarning filter to "once" when it is imported, after any filter set here, so
    deprecations raised inside installed packages are dropped where warnings are shown instead.
    """

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        deprecated = issubclass(category, DeprecationWarning | PendingDeprecationWarning | FutureWarning)
        if deprecated and f"{os.sep}site-packages{os.sep}" in filename:
            return
        _OURS(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    # MLflow's hint about integer columns: the model's signature is built from the training set on purpose.
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
    logging.getLogger("mlflow.pyfunc").addFilter(
        lambda record: not record.getMessage().startswith("Passing a Python object as `python_model`")
    )


def _today() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="The new project's directory (created if missing).")],
) -> None:
    """Start a project for a brand: the Feast repo, data/landing/, mlruns/, models/ and an API key file."""
    from nexttouch.jobs.project import init_project

    s = _settings(directory, None)
    for line in init_project(s):
        typer.echo(f"  {line}")
    d = _shown(s.project_dir)
    typer.echo(
        "next, with your tables in data/landing/ (columns: docs/data.md):\n"
        f"  nexttouch ingest --project-dir {d}\n"
        f"  nexttouch features --project-dir {d}\n"
        f"  nexttouch train --project-dir {d}\n"
        f"  nexttouch serve --project-dir {d}"
    )


def _shown(path: Path) -> str:
    """A path as the user typed it would work: relative when below the working directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path.resolve())


@app.command()
def simulate(
    project_dir: ProjectOpt = None,
    catalog: CatalogOpt = None,
    customers: Annotated[int | None, typer.Option(help="Number of customers.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of touch history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed and end, same data).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Last day boundary, UTC (default: today 00:00).")] = None,
) -> None:
    """Simulate an OMO brand and deliver its tables to data/landing/ (load them with `ingest`)."""
    from nexttouch.simulate import write_brand

    s = _settings(project_dir, catalog, customers=customers, days=days, seed=seed)
    brand = write_brand(s, load_catalog(s.catalog_path), (end.replace(tzinfo=UTC) if end else _today()), s.landing_dir)
    typer.echo(
        f"simulated {brand.customers:,} customers, {brand.events:,} touch events, "
        f"{brand.decisions:,} logged decisions -> {s.landing_dir}"
    )


@app.command()
def ingest(
    source: Annotated[
        Path | None,
        typer.Argument(
            help="Directory with identity/customers/events/decisions .parquet or .csv (default: data/landing)."
        ),
    ] = None,
    project_dir: ProjectOpt = None,
    catalog: CatalogOpt = None,
) -> None:
    """Validate and load a brand's tables; rejected rows go to data/quarantine/ with a reason each."""
    from nexttouch.ingest import IngestError, summary
    from nexttouch.ingest import ingest as run_ingest

    s = _settings(project_dir, catalog)
    try:
        reports = run_ingest(s, load_catalog(s.catalog_path), source or s.landing_dir)
    except IngestError as exc:
        typer.echo(f"ingest failed: {exc}", err=True)
        raise typer.Exit(2) from exc
    for line in summary(reports):
        typer.echo(line)
    failed = [f"{path}: {why}" for r in reports for path, why in r.failed_files.items()]
    if failed:  # the other files loaded; these need a person
        typer.echo("ingest failed for these files (copied to data/quarantine/files/):", err=True)
        typer.echo("\n".join(f"  {line}" for line in failed), err=True)
        raise typer.Exit(2)


@app.command()
def features(
    project_dir: ProjectOpt = None,
    end: Annotated[
        datetime | None,
        typer.Option(
            help="Last snapshot, UTC. Default: the day boundary after the latest ingested touch or decision, "
            "at most today 00:00.",
            show_default=False,
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(
            help="Days of snapshots before --end. Default: back to the first ingested decision (NEXTTOUCH_DAYS "
            "when there are none).",
            show_default=False,
        ),
    ] = None,
    every_days: Annotated[
        int | None,
        typer.Option(
            help="Days between snapshots, 1-7. Default: 1, or the smallest spacing that keeps customers x days / "
            "spacing under 5M rows.",
            show_default=False,
        ),
    ] = None,
    online_only: Annotated[
        bool,
        typer.Option(help="Only reload the online store from the snapshots already built."),
    ] = False,
) -> None:
    """Build feature snapshots, `feast apply` the repo and load the online store.

    Every decision to train on needs a snapshot at most 30 days before it (the views' time-to-live): the
    command refuses snapshots that leave ingested decisions uncovered. The online store keeps every touch
    the service has accepted (POST /events): they are folded in after each load.
    """
    from features.pipeline import build_offline, feast_apply, snapshot_window, uncovered
    from nexttouch.jobs.online import load_online

    s = _settings(project_dir, None, days=days, snapshot_every_days=every_days)
    if not (s.raw_dir / "customers.parquet").exists():
        typer.echo(f"features: nothing ingested in {s.raw_dir}: run `nexttouch ingest` first", err=True)
        raise typer.Exit(2)
    if not online_only:
        given = s.model_fields_set  # options and NEXTTOUCH_DAYS / NEXTTOUCH_SNAPSHOT_EVERY_DAYS
        window = snapshot_window(
            s,
            _today(),
            end.replace(tzinfo=UTC) if end else None,
            s.days if "days" in given else None,
            s.snapshot_every_days if "snapshot_every_days" in given else None,
        )
        gap = uncovered(s, window)
        if gap.decisions:
            typer.echo(
                f"features refused: {gap.decisions:,} of {gap.of:,} decisions ({gap.first:%Y-%m-%d} .. "
                f"{gap.last:%Y-%m-%d}) have no snapshot in the 30 days before them "
                f"(snapshots {window.first:%Y-%m-%d} .. {window.end:%Y-%m-%d}, every {_days(window.every_days)}). "
                "Leave out --end/--days/--every-days to have them chosen from the data, or cover the "
                "decisions with a later --end and more --days.",
                err=True,
            )
            raise typer.Exit(2)
        chosen = f" (chosen from the data: {', '.join(window.chosen)})" if window.chosen else ""
        typer.echo(
            f"snapshots: {window.first:%Y-%m-%d} .. {window.end:%Y-%m-%d}, every {_days(window.every_days)}"
            f"{chosen}; they cover all {gap.of:,} decisions"
        )
        build = build_offline(s, window.end, window.days, every_days=window.every_days)
        typer.echo(
            f"features: {build.rows:,} snapshot rows for {build.customers:,} customers ({build.events:,} touch events)"
        )
        feast_apply(s)
        typer.echo(f"feast: applied {s.feature_repo}")
    loaded = load_online(s, datetime.now(UTC))
    typer.echo(
        f"online store loaded: {max(loaded.rows.values(), default=0):,} customers; "
        f"{loaded.folded:,} customers' contact state moved by touches posted to the service"
    )


def _days(n: int) -> str:
    return "day" if n == 1 else f"{n} days"


@app.command()
def train(project_dir: ProjectOpt = None, catalog: CatalogOpt = None) -> None:
    """Train on the ingested data, evaluate, register; the version becomes champion only if it passes the gate."""
    from training.job import InvalidTrainingData, run_training
    from training.registry import TrackingUnavailable

    s = _settings(project_dir, catalog)
    try:
        report = run_training(s, load_catalog(s.catalog_path))
    except (TrackingUnavailable, InvalidTrainingData) as exc:
        typer.echo(f"train failed: {exc}; champion unchanged", err=True)
        raise typer.Exit(1) from exc
    outcome = f"promoted to @{s.champion_alias}" if report.promoted else f"not promoted ({report.verdict.reason})"
    typer.echo(
        f"trained on {report.rows:,} decisions: valid AUC {report.metrics['valid_auc']:.3f}, "
        f"log loss {report.metrics['valid_logloss']:.4f}; registered {s.model_name} "
        f"v{report.registered.version}: {outcome}"
    )


@app.command()
def plan(
    project_dir: ProjectOpt = None,
    catalog: CatalogOpt = None,
    at: Annotated[datetime | None, typer.Option(help="When contacts go out, UTC (quiet hours; default now).")] = None,
    out: Annotated[Path | None, typer.Option(help="Plan file, .parquet or .csv (default data/plans/).")] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(
            help="Share of customers given a random eligible action, logged with its propensity so that "
            "training on the outcomes stays unbiased (default: NEXTTOUCH_EPSILON, 0.05). A plan to send out "
            "explores; a plan to evaluate or compare needs --epsilon 0.",
            show_default=False,
        ),
    ] = None,
    take_capacity: Annotated[
        bool, typer.Option(help="Take the plan's scarce slots in the service's capacity ledger.")
    ] = False,
) -> None:
    """Decide every customer at once (nightly batch); scarce capacity goes where it adds most value."""
    from nexttouch.jobs.plan import run_plan

    s = _settings(project_dir, catalog)
    when = at.replace(tzinfo=UTC) if at else datetime.now(UTC)
    summary = run_plan(s, load_catalog(s.catalog_path), when, out, epsilon, take_capacity)
    counts = ", ".join(f"{a} {c:,}" for a, c in summary.counts.items())
    typer.echo(f"planned {summary.customers:,} customers ({counts}); expected net value {summary.total_value:,.0f}")
    if summary.explored:
        typer.echo(
            f"{summary.explored:,} customers explored at random (epsilon {summary.epsilon:g}); "
            "to evaluate or compare plans, plan with --epsilon 0"
        )
    if summary.fell_back:
        typer.echo(f"{summary.fell_back:,} customers fell back: the service took their slots while the plan ran")
    typer.echo(f"plan written to {summary.path}")


@app.command("export-log")
def export_log(project_dir: ProjectOpt = None) -> None:
    """Write the service's decisions (with outcomes) and posted events to data/inbox/ for `nexttouch ingest`."""
    s = _settings(project_dir, None)
    exported = _collect_service_logs(s)
    if not exported:
        typer.echo(f"no decision log at {s.decision_log}", err=True)
        raise typer.Exit(1)
    for what, path in exported.items():
        typer.echo(f"{what} exported to {path}" if path else f"{what}: nothing to export")


def _collect_service_logs(s: Settings) -> dict[str, Path | None]:
    """The service's decision log and the events posted to it (SQLite, or PostgreSQL when DECISION_LOG_URL is
    set) as parquet in data/inbox: all decisions with their outcomes, the events not exported before."""
    from serving.decision_log import DecisionLog
    from serving.event_log import EventLog

    if not s.decision_log_url and not s.decision_log.exists():
        return {}  # no service has run yet
    log = DecisionLog.open(s)
    try:
        inbox = s.data_dir / "inbox"
        return {"decisions": log.export(inbox), "events": EventLog(log).export(inbox)}
    finally:
        log.close()


@app.command()
def retrain(
    project_dir: ProjectOpt = None,
    catalog: CatalogOpt = None,
    date: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], help="The day, UTC (default: today).")] = None,
    source: Annotated[
        list[Path] | None, typer.Option(help="Input directory, repeatable (default: data/landing and data/inbox).")
    ] = None,
) -> None:
    """Nightly job: ingest, validate, features, label, train, evaluate, register; promote only through the gate."""
    from nexttouch.jobs.nightly import RetrainFailed, RetrainLocked
    from nexttouch.jobs.nightly import retrain as run_retrain

    s = _settings(project_dir, catalog)
    day = (date or _today()).date()
    try:
        report = run_retrain(s, load_catalog(s.catalog_path), day, source, collect=lambda: _collect_service_logs(s))
    except RetrainLocked as exc:
        typer.echo(f"retrain refused: {exc}", err=True)
        raise typer.Exit(3) from exc
    except RetrainFailed as exc:
        typer.echo(f"retrain failed at step {exc.step}: {exc.cause}; champion unchanged", err=True)
        raise typer.Exit(1) from exc
    if report.skipped:
        typer.echo(
            f"retrain {day}: already done with the same inputs (fingerprint {report.fingerprint[:12]}), nothing to do"
        )
        return
    from nexttouch.ingest import summary

    for line in summary(report.ingested):
        typer.echo(line)
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    t = report.train
    assert t is not None
    outcome = f"promoted to @{s.champion_alias}" if t.promoted else f"not promoted ({t.verdict.reason})"
    typer.echo(f"retrain {day}: {t.rows:,} decisions -> {s.model_name} v{t.registered.version}: {outcome}")
    typer.echo(f"steps: {steps}")


@app.command()
def rollback(project_dir: ProjectOpt = None) -> None:
    """Point @champion back at @previous (the version it replaced); the move is recorded."""
    from training.promotion import NothingToRollBack, actor
    from training.promotion import rollback as run_rollback

    s = _settings(project_dir, None)
    try:
        move = run_rollback(s, actor("nexttouch rollback"))
    except NothingToRollBack as exc:
        typer.echo(f"rollback refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"{s.model_name}: @{s.champion_alias} v{move.replaced} -> v{move.champion}; "
        f"@previous {'v' + move.previous if move.previous else 'cleared'}"
    )


@app.command("champion-history")
def champion_history(project_dir: ProjectOpt = None) -> None:
    """Every move of @champion: when, what, who, why, with the gate's numbers (from the MLflow registry)."""
    from training.promotion import champion_history as read_history

    s = _settings(project_dir, None)
    moves = read_history(s)
    if not moves:
        typer.echo(f"{s.model_name} has no champion history")
        return
    last = moves[-1]
    typer.echo(
        f"{s.model_name}: @{s.champion_alias} v{last.champion} since {last.at.replace('T', ' ')}, "
        f"@previous {'v' + last.previous if last.previous else '-'}"
    )
    for m in moves:
        typer.echo(
            f"\n{m.seq:>3}  {m.at.replace('T', ' ')}  {m.kind} v{m.champion}"
            f" (replaced {'v' + m.replaced if m.replaced else 'none'})  by {m.by}"
        )
        typer.echo(f"     why: {m.why}")
        numbers = dict(m.metrics)
        parts = []
        for key, label in (
            ("vs_best_single", "vs best single action"),
            ("vs_champion", "vs champion"),
            ("champion_vs_best_single", "champion vs best single action"),
        ):
            if f"{key}_diff" in numbers:  # a paired comparison: mean [95% interval] per decision
                diff, low, high = (numbers.pop(f"{key}_{k}") for k in ("diff", "low", "high"))
                numbers.pop(f"{key}_differ", None)
                parts.append(f"{label} {diff:+.3f} [{low:+.3f}, {high:+.3f}]")
        names = {"test_auc": "test AUC", "test_logloss": "test log loss", "tolerance": "tolerance"}
        parts += [f"{names.get(k, k)} {v:.4g}" for k, v in numbers.items()]
        if parts:
            typer.echo("     " + "; ".join(parts))


@app.command()
def whatif(
    project_dir: ProjectOpt = None,
    catalog: CatalogOpt = None,
    customers: Annotated[int, typer.Option(help="Customers in each simulated world.")] = 5_000,
    days: Annotated[int, typer.Option(help="Days each policy runs forward, closed loop.")] = 60,
    seeds: Annotated[int, typer.Option(help="Worlds (seeds 1..N); every policy meets the same ones.")] = 2,
    model_dir: Annotated[
        Path | None, typer.Option(help="A saved decision model to run as champion (default: the registry's).")
    ] = None,
    log_mlflow: Annotated[bool, typer.Option(help="Log the table and plot to an MLflow run of the project.")] = True,
) -> None:
    """Run the champion, the baselines and the oracle forward in the simulated brand and compare them."""
    from nexttouch.jobs.whatif import champion_from, run_whatif

    s = _settings(project_dir, catalog)
    model = champion_from(s, model_dir)
    if model is None:
        typer.echo("no champion in the registry and no --model-dir: running the baselines only", err=True)
    result = run_whatif(
        s, load_catalog(s.catalog_path), customers, days, range(1, seeds + 1), model, log_to_mlflow=log_mlflow
    )
    typer.echo(result.text)
    if result.share is not None:
        typer.echo(f"champion's share of the oracle's margin over the best single action: {100 * result.share:.1f} %")
    if result.run_id:
        typer.echo(f"logged to MLflow run {result.run_id}")


@app.command()
def serve(
    project_dir: ProjectOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1; one per core).")] = None,
) -> None:
    """Run the decision service (`bentoml serve`) in the foreground; SIGTERM or Ctrl-C drains it and stops
    every process of it."""
    from pydantic import ValidationError

    from nexttouch.settings import ProfileError
    from serving.server import serve_forever

    try:
        s = _settings(project_dir, None, host=host, port=port, workers=workers)
    except (ProfileError, ValidationError) as exc:
        typer.echo(f"nexttouch serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(serve_forever(s))


@app.command()
def config(project_dir: ProjectOpt = None, catalog: CatalogOpt = None) -> None:
    """Print the effective settings (options over environment over nexttouch.toml over defaults), secrets
    masked, each with where it comes from."""
    from pydantic import ValidationError

    from nexttouch.settings import ProfileError, profile_path, shown, sources

    overrides: dict[str, object] = {"project_dir": project_dir, "catalog_path": catalog}
    try:
        s = load_settings(**overrides)
        origin = sources(overrides)
    except (ProfileError, ValidationError) as exc:
        typer.echo(f"nexttouch config: {exc}", err=True)
        raise typer.Exit(2) from exc
    path = profile_path(s.project_dir)
    typer.echo(f"# effective settings; profile file {path}{'' if path.is_file() else ' (none)'}")
    for name, value in s.model_dump().items():
        line = f"# {name} unset" if value is None else f"{name} = {shown(name, value)}"
        typer.echo(f"{line:<60} # {origin[name]}")


@app.command()
def demo(
    project_dir: ProjectOpt = None,
    customers: Annotated[int | None, typer.Option(help="Number of simulated customers.")] = None,
    port: Annotated[int | None, typer.Option(help="Port of the demo service.")] = None,
    keep_serving: Annotated[
        bool | None, typer.Option(help="Keep the service running at the end (default: when interactive).")
    ] = None,
) -> None:
    """Simulate -> features -> train -> serve -> a few real HTTP decisions."""
    from nexttouch.jobs.demo import run_demo

    s = _settings(project_dir, None, customers=customers, port=port)
    run_demo(s, load_catalog(s.catalog_path), _today(), keep_serving)


if __name__ == "__main__":
    app()
