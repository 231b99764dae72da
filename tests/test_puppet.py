"""The real ``puppet apply``: every way a run goes wrong is a failure with a clear message."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mozagent.apply.process import ChildRunner
from mozagent.apply.puppet import ApplyItem, PuppetPaths, run_puppet
from mozagent.config import PuppetConfig


@pytest.fixture
def paths(tmp_path: Path, puppet_bin: str) -> PuppetPaths:
    hiera = tmp_path / "hiera.yaml"
    (tmp_path / "hd").mkdir()
    (tmp_path / "hd" / "common.yaml").write_text("greeting: from-hiera\n")
    hiera.write_text(
        f"version: 5\ndefaults:\n  datadir: {tmp_path / 'hd'}\n  data_hash: yaml_data\n"
        "hierarchy:\n  - name: common\n    path: common.yaml\n"
    )
    facts = tmp_path / "facts.d"
    facts.mkdir()
    (facts / "mozagent.json").write_text('{"mozagent_app": "shop"}\n')
    return PuppetPaths(str(hiera), str(facts), str(tmp_path / "work"))


def cfg(tmp_path: Path, **kw: object) -> PuppetConfig:
    args: dict[str, object] = {"extra_args": ("--vardir", str(tmp_path / "var")), "timeout": 120}
    args.update(kw)
    return PuppetConfig(**args)  # type: ignore[arg-type]


def manifest(tmp_path: Path, body: str) -> ApplyItem:
    path = tmp_path / "m.pp"
    path.write_text(body)
    return ApplyItem("m.pp", str(path))


def test_changes_then_no_changes_with_hiera_and_facts(tmp_path: Path, paths: PuppetPaths) -> None:
    out = tmp_path / "out.txt"
    item = manifest(
        tmp_path,
        f"file {{ '{out}': content => \"${{lookup('greeting')}} "
        "${facts['mozagent_app']}\\n\" }\n",
    )
    first = run_puppet(cfg(tmp_path), item, paths, ChildRunner(threading.Event()))
    assert first.ok, first.output_tail
    assert (first.exit_code, first.changed, first.failed) == (2, 1, 0)
    assert out.read_text() == "from-hiera shop\n"
    second = run_puppet(cfg(tmp_path), item, paths, ChildRunner(threading.Event()))
    assert second.ok and second.exit_code == 0 and second.changed == 0
    assert second.message == "applied, no changes"


def test_compile_error_fails(tmp_path: Path, paths: PuppetPaths) -> None:
    res = run_puppet(
        cfg(tmp_path),
        manifest(tmp_path, "file { 'x': ensure => \n"),
        paths,
        ChildRunner(threading.Event()),
    )
    assert not res.ok
    assert res.exit_code == 1
    assert "could not compile" in res.message
    assert any("Error" in line for line in res.output_tail)


def test_failed_resource_fails(tmp_path: Path, paths: PuppetPaths) -> None:
    res = run_puppet(
        cfg(tmp_path),
        manifest(tmp_path, "exec { '/bin/false': }\n"),
        paths,
        ChildRunner(threading.Event()),
    )
    assert not res.ok
    assert res.exit_code in (4, 6)
    assert res.failed == 1


def test_missing_puppet_is_a_failure_not_a_success(tmp_path: Path, paths: PuppetPaths) -> None:
    res = run_puppet(
        cfg(tmp_path, binary="/nonexistent/puppet"),
        manifest(tmp_path, "notice('x')\n"),
        paths,
        ChildRunner(threading.Event()),
    )
    assert not res.ok
    assert res.message == "failed: puppet binary '/nonexistent/puppet' not found"


def test_missing_manifest(tmp_path: Path, paths: PuppetPaths) -> None:
    res = run_puppet(
        cfg(tmp_path),
        ApplyItem("gone", str(tmp_path / "gone.pp")),
        paths,
        ChildRunner(threading.Event()),
    )
    assert not res.ok and "does not exist" in res.message


def test_timeout_kills_puppet(tmp_path: Path, paths: PuppetPaths) -> None:
    started = time.monotonic()
    res = run_puppet(
        cfg(tmp_path, timeout=4),
        manifest(tmp_path, "exec { '/bin/sleep 60': timeout => 0 }\n"),
        paths,
        ChildRunner(threading.Event()),
    )
    assert not res.ok
    assert res.message == "failed: puppet timed out after 4 s"
    assert time.monotonic() - started < 30


def test_cancel_aborts(tmp_path: Path, paths: PuppetPaths) -> None:
    cancel = threading.Event()
    threading.Timer(3, cancel.set).start()
    res = run_puppet(
        cfg(tmp_path),
        manifest(tmp_path, "exec { '/bin/sleep 60': timeout => 0 }\n"),
        paths,
        ChildRunner(cancel),
    )
    assert not res.ok and res.message.startswith("aborted")


def test_status_shows_puppets_own_errors_of_a_failed_run() -> None:
    from mozagent.report.status import format_last_apply

    tail = [
        "Error: Facter: Permission denied @ rb_sysopen - /proc/1/environ",
        "Error: Evaluation Error: Error while evaluating a Resource Statement, X[y]:",
        "  parameter 'env' expects a match for Pattern[/\\A[a-z]\\z/], got 'Bad'",
        "Notice: something else",
    ]
    last = {"ok": False, "results": [{"name": "site.pp", "ok": False, "message": "failed: x",
                                       "exit_code": 1, "output_tail": tail}]}  # fmt: skip
    text = "\n".join(format_last_apply(last))
    assert "Facter" not in text
    assert (
        "      Error: Evaluation Error: Error while evaluating a Resource Statement, X[y]: "
        "parameter 'env' expects a match for Pattern" in text
    ), text
    ok = {"ok": True, "results": [{"name": "site.pp", "ok": True, "message": "applied",
                                    "output_tail": tail}]}  # fmt: skip
    assert "Evaluation Error" not in "\n".join(format_last_apply(ok))
