"""One configuration: the project's nexttouch.toml, the environment over it, options over both; secrets never
in the file and never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexttouch.settings import ProfileError, load_settings
from serving.server import _command

PROFILE = """
online_store = "redis"
redis_url = "redis.internal:6379,db=2"
decision_log_url = "postgresql://nexttouch@db.internal:5432/nexttouch"
port = 3039
workers = 3
"""


def test_the_profile_file_is_read_and_the_environment_and_options_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("NEXTTOUCH_")]:  # e.g. set by an earlier test's store
        monkeypatch.delenv(name)
    (tmp_path / "nexttouch.toml").write_text(PROFILE)
    monkeypatch.setenv("NEXTTOUCH_PORT", "3038")
    s = load_settings(project_dir=tmp_path)
    assert (s.online_store, s.redis_url, s.workers, s.port) == ("redis", "redis.internal:6379,db=2", 3, 3038)
    assert s.decision_log_url == "postgresql://nexttouch@db.internal:5432/nexttouch"
    assert load_settings(project_dir=tmp_path, port=3037).port == 3037
    monkeypatch.setenv("NEXTTOUCH_PROJECT_DIR", str(tmp_path))  # the project directory from the environment
    assert load_settings().online_store == "redis"
    monkeypatch.delenv("NEXTTOUCH_PROJECT_DIR")
    assert load_settings(project_dir=tmp_path / "elsewhere").online_store == "sqlite"  # no file there
    # The server is started with the effective settings, the file's included.
    _cmd, env = _command(s, api_key="k")
    assert (env["NEXTTOUCH_ONLINE_STORE"], env["NEXTTOUCH_WORKERS"], env["NEXTTOUCH_PORT"]) == ("redis", "3", "3038")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('api_key = "abc"', "set NEXTTOUCH_API_KEY in the environment"),
        ('decision_log_url = "postgresql://nt:hunter2@db/nt"', "decision_log_url holds a password"),
        ('redis_url = "r:6379,password=hunter2"', "redis_url holds a password"),
        ("prot = 3031", "unknown setting 'prot'"),
        ('project_dir = "/srv"', "project_dir cannot be set"),
        ("port = ", "nexttouch.toml"),
    ],
)
def test_the_profile_file_refuses_secrets_and_unknown_names(tmp_path: Path, line: str, says: str) -> None:
    (tmp_path / "nexttouch.toml").write_text(line + "\n")
    with pytest.raises(ProfileError, match=says) as refused:
        load_settings(project_dir=tmp_path)
    assert "hunter2" not in str(refused.value)


def test_config_prints_the_effective_settings_with_secrets_masked_and_their_origin(tmp_path: Path) -> None:
    (tmp_path / "nexttouch.toml").write_text(PROFILE)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEXTTOUCH_")},
        "NEXTTOUCH_API_KEY": "key-that-must-not-show",
        "NEXTTOUCH_DECISION_LOG_URL": "postgresql://nt:pw-that-must-not-show@db:5432/nt",
        "NEXTTOUCH_WORKERS": "2",
    }
    code = (
        "import sys\n"
        "from nexttouch.cli import app\n"
        f"try:\n    app(['config', '--project-dir', {str(tmp_path)!r}])\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print('LOADED', sorted(m for m in ('feast', 'mlflow', 'bentoml', 'lightgbm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    body = [line for line in out.splitlines()[1:] if line.strip() and "LOADED" not in line]
    lines = {line.removeprefix("# ").split()[0]: line for line in body}
    assert "must-not-show" not in out
    assert lines["api_key"].split("#")[0].strip() == 'api_key = "***"' and lines["api_key"].endswith("# env")
    assert 'decision_log_url = "postgresql://nt:***@db:5432/nt"' in lines["decision_log_url"]
    assert lines["decision_log_url"].endswith("# env")
    assert 'online_store = "redis"' in lines["online_store"] and lines["online_store"].endswith("# file")
    assert "workers = 2" in lines["workers"] and lines["workers"].endswith("# env")
    assert "port = 3039" in lines["port"] and lines["port"].endswith("# file")
    assert "epsilon = 0.05" in lines["epsilon"] and lines["epsilon"].endswith("# default")
    assert lines["tracking_uri"].startswith("# tracking_uri unset")
    assert str(tmp_path / "nexttouch.toml") in out.splitlines()[0]
    assert "LOADED []" in out  # as fast as --help: no heavy stack imported


def test_config_refuses_a_bad_profile_with_exit_code_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nexttouch.cli import app

    (tmp_path / "nexttouch.toml").write_text('api_key = "abc"\n')
    result = CliRunner().invoke(app, ["config", "--project-dir", str(tmp_path)])
    assert result.exit_code == 2 and "set NEXTTOUCH_API_KEY in the environment" in result.output


def test_the_production_profile_in_the_docs_is_a_valid_file(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "production.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "nexttouch.toml").write_text(block)
    s = load_settings(project_dir=tmp_path)
    assert (s.online_store, s.workers, s.snapshot_every_days) == ("redis", 2, 7)
    assert s.decision_log_url is not None and s.decision_log_url.startswith("postgresql://")
