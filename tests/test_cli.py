"""The command line as a user meets it: fast help, a version, the commands listed."""

import subprocess
import sys

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
