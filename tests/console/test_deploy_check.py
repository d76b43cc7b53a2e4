from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check_deploy(tmp_path: Path, **extra: str) -> str:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "BREAKWATER_HTTPS"}
    }
    env.update(
        {
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "breakwater.example.com",
            "BREAKWATER_HTTPS": "1",
            "BREAKWATER_VAR_DIR": str(tmp_path),
        }
    )
    env.update(extra)
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def test_check_deploy_with_production_settings_reports_only_the_opt_in_preload(
    tmp_path: Path,
) -> None:
    output = _check_deploy(tmp_path)
    assert "security.W021" in output
    assert "identified 1 issue" in output


def test_check_deploy_is_clean_once_the_operator_opts_into_preload(tmp_path: Path) -> None:
    output = _check_deploy(tmp_path, SECURE_HSTS_PRELOAD="1")
    assert "no issues" in output
