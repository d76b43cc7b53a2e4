"""``manage.py apply -f FILE.yaml`` and ``manage.py export`` (docs/INTERFACES.md §2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from agents.config.export import config_export_yaml
from agents.models import Agent, ModelDeployment, Provider
from budgets.models import Budget
from core.models import AuditEvent

pytestmark = [pytest.mark.dbmatrix, pytest.mark.django_db]

DEMO_ROWS = 34


def _apply(*args: str, **options: object) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("apply", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def _export() -> str:
    out = io.StringIO()
    call_command("export", stdout=out)
    return out.getvalue()


def _counts() -> list[int]:
    return [t.objects.count() for t in (Provider, ModelDeployment, Agent, Budget, AuditEvent)]


@pytest.fixture
def demo_file(tmp_path: Path, demo_yaml: str) -> Path:
    path = tmp_path / "breakwater.yaml"
    path.write_text(demo_yaml)
    return path


def test_apply_prints_each_change_and_a_summary(demo_file: Path) -> None:
    out, err = _apply(file=str(demo_file))

    lines = out.splitlines()
    assert lines[0] == "created provider sim-support"
    assert "created model gpt-4o-mini (sim-support-b/gpt-4o-mini)" in lines
    assert "created agent release-notes" in lines
    assert "created budget global:* monthly" in lines
    assert lines[-1] == f"{DEMO_ROWS} created, 0 updated, 0 deleted, 0 unchanged"
    assert len(lines) == DEMO_ROWS + 1
    assert err == ""
    assert Agent.objects.count() == 10


def test_apply_accepts_the_short_option_and_reports_no_changes_the_second_time(
    demo_file: Path,
) -> None:
    _apply("-f", str(demo_file))
    counts = _counts()

    out, _ = _apply("-f", str(demo_file))

    assert out == f"0 created, 0 updated, 0 deleted, {DEMO_ROWS} unchanged\n"
    assert _counts() == counts


def test_an_invalid_file_fails_with_each_error_on_stderr_and_applies_nothing(
    tmp_path: Path, demo_yaml: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        demo_yaml.replace("    breaker: {failure_threshold: 5, recovery_timeout_s: 60, "
                          "half_open_max_calls: 2}",
                          "    breaker: {failure_threshold: 0}\n    colour: red")
    )  # fmt: skip

    with pytest.raises(CommandError) as caught:
        _apply(file=str(path))

    assert str(caught.value) == "2 error(s); nothing was applied"
    assert _counts() == [0, 0, 0, 0, 0]


def test_error_lines_on_stderr_name_the_file_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("agents: [{name: a, model: m, timeout_s: 0, colour: red}]\n")
    err = io.StringIO()

    with pytest.raises(CommandError):
        call_command("apply", file=str(path), stdout=io.StringIO(), stderr=err)

    assert err.getvalue().splitlines() == [
        f"{path}: agents[0].timeout_s: must be >= 0.1",
        f"{path}: agents[0].colour: unknown field",
    ]


def test_a_reference_error_is_reported_the_same_way(tmp_path: Path, demo_file: Path) -> None:
    _apply(file=str(demo_file))
    counts = _counts()
    path = tmp_path / "bad.yaml"
    path.write_text(
        "agents:\n"
        "  - {name: customer-support, model: gpt-4o, max_tokens: 99}\n"
        "  - {name: other, model: gpt-5}\n"
    )
    err = io.StringIO()

    with pytest.raises(CommandError, match=r"^1 error\(s\); nothing was applied$"):
        call_command("apply", file=str(path), stdout=io.StringIO(), stderr=err)

    assert err.getvalue() == f"{path}: agents[1].model: unknown model 'gpt-5'\n"
    assert Agent.objects.get(name="customer-support").max_tokens == 512
    assert _counts() == counts


def test_apply_reads_the_document_from_stdin_with_dash(
    monkeypatch: pytest.MonkeyPatch, demo_yaml: str
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(demo_yaml))

    out, _ = _apply(file="-")

    assert out.splitlines()[-1] == f"{DEMO_ROWS} created, 0 updated, 0 deleted, 0 unchanged"
    assert Provider.objects.count() == 6


def test_errors_read_from_stdin_are_prefixed_with_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("agents: [{name: a, model: m, colour: red}]"))
    err = io.StringIO()

    with pytest.raises(CommandError):
        call_command("apply", "-f", "-", stdout=io.StringIO(), stderr=err)

    assert err.getvalue() == "-: agents[0].colour: unknown field\n"


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("providers:\n  - {name: p, kind: simulated\nmodels: []\n")
    err = io.StringIO()

    with pytest.raises(CommandError):
        call_command("apply", file=str(path), stdout=io.StringIO(), stderr=err)

    assert err.getvalue().startswith(f"{path}: line 3, column 7: invalid YAML: ")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(CommandError) as caught:
        _apply(file=str(path))

    assert str(caught.value) == f"{path}: No such file or directory"


def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as caught:
        _apply(file=str(tmp_path))

    assert str(caught.value) == f"{tmp_path}: Is a directory"


def test_a_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    raw = "agents: [{name: a, model: m, description: caf\xe9}]\n".encode("latin-1")
    path.write_bytes(raw)

    with pytest.raises(CommandError) as caught:
        _apply(file=str(path))

    offset = raw.index(b"\xe9")
    assert str(caught.value) == f"{path}: not UTF-8 text (invalid byte at offset {offset})"
    assert _counts() == [0, 0, 0, 0, 0]


def test_the_file_option_is_required() -> None:
    with pytest.raises(CommandError, match="-f/--file"):
        _apply()


def test_dry_run_prints_the_plan_and_writes_nothing(demo_file: Path) -> None:
    out, _ = _apply(file=str(demo_file), dry_run=True)

    assert "created agent customer-support" in out.splitlines()
    assert out.splitlines()[-1] == (
        f"dry run, nothing written: {DEMO_ROWS} created, 0 updated, 0 deleted, 0 unchanged"
    )
    assert _counts() == [0, 0, 0, 0, 0]


def test_prune_deletes_what_the_file_omits(tmp_path: Path, demo_file: Path) -> None:
    _apply(file=str(demo_file))
    path = tmp_path / "small.yaml"
    path.write_text(
        "providers: [{name: sim-general, kind: simulated}]\n"
        "models: [{name: claude-3-5-haiku, provider: sim-general,"
        " upstream_model: claude-3-5-haiku-20241022, input_usd_per_mtok: 0.8,"
        " output_usd_per_mtok: 4, max_concurrency: 64}]\n"
    )

    out, _ = _apply("--prune", "--dry-run", file=str(path))
    assert out.splitlines()[-1].startswith("dry run, nothing written: 0 created, 1 updated, ")
    assert Agent.objects.count() == 10

    out, _ = _apply("--prune", file=str(path))

    assert "deleted agent customer-support" in out.splitlines()
    assert "deleted provider sim-review" in out.splitlines()
    assert "updated provider sim-general" in out.splitlines()  # its simulation settings reset
    assert out.splitlines()[-1] == "0 created, 1 updated, 32 deleted, 1 unchanged"
    assert (Provider.objects.count(), ModelDeployment.objects.count()) == (1, 1)
    assert (Agent.objects.count(), Budget.objects.count()) == (0, 0)


def test_export_prints_the_same_document_as_config_export(demo_file: Path) -> None:
    _apply(file=str(demo_file))

    text = _export()

    assert text == config_export_yaml()
    assert text.startswith(
        "providers:\n- name: sim-analyst\n  kind: openai\n  base_url: http://127.0.0.1:18104/v1\n"
    )


def test_export_piped_into_apply_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, demo_file: Path
) -> None:
    _apply(file=str(demo_file))
    counts = _counts()
    monkeypatch.setattr("sys.stdin", io.StringIO(_export()))

    out, _ = _apply(file="-")

    assert out == f"0 created, 0 updated, 0 deleted, {DEMO_ROWS} unchanged\n"
    assert _counts() == counts
