"""The command line as a user meets it: fast help, a version, the commands listed."""

import subprocess
import sys
from pathlib import Path

HEAVY = ("feast", "mlflow", "bentoml", "lightgbm", "pandas")


def test_help_lists_the_commands_without_importing_the_heavy_stacks() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from nexttouch.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "print(result.output)\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out
    for command in ("demo", "plan", "retrain", "serve", "train", "features", "ingest"):
        assert command in out


def test_version() -> None:
    from typer.testing import CliRunner

    from nexttouch.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("nexttouch 0.")


def test_init_makes_a_project_the_other_commands_can_use(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nexttouch.cli import app

    project = tmp_path / "brand"
    first = CliRunner().invoke(app, ["init", str(project)])
    assert first.exit_code == 0, first.output
    for path in ("features/feature_store.yaml", "features/feature_views.py", "features/.feastignore"):
        assert (project / path).is_file(), path
    assert (project / "data" / "landing").is_dir() and (project / "mlruns").is_dir()
    key_file = project / "data" / "api_key"
    key = key_file.read_text().strip()
    assert key and key not in first.output and (key_file.stat().st_mode & 0o777) == 0o600
    assert f"nexttouch ingest --project-dir {project}" in first.output
    again = CliRunner().invoke(app, ["init", str(project)])  # refreshes the Feast repo, keeps the key
    assert again.exit_code == 0 and key_file.read_text().strip() == key


def test_features_before_ingest_says_what_to_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nexttouch.cli import app

    assert CliRunner().invoke(app, ["init", str(tmp_path)]).exit_code == 0
    result = CliRunner().invoke(app, ["features", "--project-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "nothing ingested" in result.output and "run `nexttouch ingest` first" in result.output
