"""``mozagent data``: operators' commands against a real ZooKeeper."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kazoo.client import KazooClient

from mozagent.cli import main
from mozagent_dev.testing import ZooKeeperServer, free_port


@pytest.fixture
def data(zk_server: ZooKeeperServer, zk_root: str, capsys: pytest.CaptureFixture[str]):
    """Run ``mozagent data ...`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["data", *args, "--zookeeper", zk_server.hosts, "--root", zk_root])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_set_get_across_layers(data, zk: KazooClient, zk_root: str) -> None:
    assert data("set", "shop", "greeting", "hello")[0] == 0
    assert data("set", "shop", "greeting", "node-hi", "--node", "web1")[0] == 0
    assert data("set", "--global", "port", "8080")[0] == 0
    assert data("get", "shop", "greeting") == (0, "hello\n", "")
    assert data("get", "shop", "greeting", "--node", "web1")[1] == "node-hi\n"
    assert data("get", "--global", "port")[1] == "8080\n"
    raw, _ = zk.get(f"{zk_root}/apps/shop/nodes/web1/data/greeting")
    assert raw == b"node-hi\n"


def test_structured_values_and_string_flag(data) -> None:
    assert data("set", "shop", "vhost", '{"name": "a.example", "ports": [80, 443]}')[0] == 0
    assert yaml.safe_load(data("get", "shop", "vhost")[1]) == {
        "name": "a.example",
        "ports": [80, 443],
    }
    assert data("set", "shop", "flag", "yes", "--string")[0] == 0
    code, out, _ = data("export", "shop")
    assert code == 0
    assert yaml.safe_load(out) == {
        "flag": "yes",
        "vhost": {"name": "a.example", "ports": [80, 443]},
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "shop", "Bad", "1"), "not a Hiera key"),
        (("set", "shop", "..", "1"), "path component"),
        (("set", "shop", "k", "[unclosed"), "not valid YAML"),
        (("set", "sh/op", "k", "1"), "app name 'sh/op' is invalid"),
        (("set", "shop", "k"), "takes APP KEY VALUE"),
        (("get", "--global", "a", "b"), "takes KEY --global"),
    ],
)
def test_invalid_input_exits_2_and_writes_nothing(
    data, zk: KazooClient, zk_root: str, args: tuple[str, ...], message: str
) -> None:
    code, _, err = data(*args)
    assert code == 2
    assert message in err
    assert zk.exists(zk_root) is None


def test_oversized_value_is_refused(data, zk: KazooClient, zk_root: str) -> None:
    code, _, err = data("set", "shop", "big", "x" * (1024 * 1024 + 10))
    assert code == 2 and "over the 1 MiB limit" in err
    assert zk.exists(zk_root) is None


def test_dry_run_prints_diff_and_writes_nothing(data, zk: KazooClient, zk_root: str) -> None:
    data("set", "shop", "a", "1")
    code, out, _ = data("set", "shop", "a", "2", "--dry-run")
    assert code == 0
    assert "-a: 1" in out and "+a: 2" in out
    assert data("get", "shop", "a")[1] == "1\n"


def test_delete_and_missing_keys(data) -> None:
    data("set", "shop", "a", "1")
    assert data("delete", "shop", "a")[0] == 0
    code, _, err = data("get", "shop", "a")
    assert code == 1 and "no such key" in err
    assert data("delete", "shop", "a")[0] == 1


def test_list_flags_bad_znodes(data, zk: KazooClient, zk_root: str) -> None:
    data("set", "shop", "a", "1")
    zk.create(f"{zk_root}/apps/shop/data/Bad_Name", b"x")
    code, out, err = data("list", "shop")
    assert out == "a\n"
    assert "Bad_Name" in err and code == 1


def test_import_replaces_layer_in_one_transaction(
    data, zk: KazooClient, zk_root: str, tmp_path: Path
) -> None:
    data("set", "shop", "keep", "same")
    data("set", "shop", "change", "old")
    data("set", "shop", "drop", "gone")
    src = tmp_path / "shop.yaml"
    src.write_text("keep: same\nchange: new\nadd: [1, 2]\n")
    code, out, _ = data("import", "shop", str(src), "--dry-run")
    assert code == 0 and "+change: new" in out and "-drop: gone" in out
    assert data("get", "shop", "change")[1] == "old\n"
    code, out, _ = data("import", "shop", str(src))
    assert code == 0, out
    assert sorted(zk.get_children(f"{zk_root}/apps/shop/data")) == ["add", "change", "keep"]
    assert yaml.safe_load(data("export", "shop")[1]) == {
        "keep": "same",
        "change": "new",
        "add": [1, 2],
    }


def test_import_creates_a_new_layer_and_export_round_trips(data, tmp_path: Path) -> None:
    src = tmp_path / "web1.yaml"
    src.write_text("apache::vhost_name: my.python.site.com\nworkers: 4\n")
    assert data("import", "shop", str(src), "--node", "web1")[0] == 0
    out = data("export", "shop", "--node", "web1")[1]
    assert yaml.safe_load(out) == {"apache::vhost_name": "my.python.site.com", "workers": 4}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must be a mapping"),
        ("Bad: 1\n", "not a Hiera key"),
        ("a: [1\n", "not valid YAML"),
        ("a: 1\na: 2\n", "duplicate key"),
    ],
)
def test_import_refuses_bad_files(
    data, zk: KazooClient, zk_root: str, tmp_path: Path, text: str, message: str
) -> None:
    data("set", "shop", "a", "1")
    src = tmp_path / "bad.yaml"
    src.write_text(text)
    code, _, err = data("import", "shop", str(src))
    assert code == 2 and message in err and str(src) in err
    assert zk.get_children(f"{zk_root}/apps/shop/data") == ["a"]


def test_no_zookeeper_configured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "get", "shop", "a", "--config", str(tmp_path / "none.yaml")])
    assert code == 2
    assert "config file not found" in capsys.readouterr().err


def test_unreachable_zookeeper(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["data", "get", "shop", "a", "--zookeeper", f"127.0.0.1:{free_port()}", "--timeout", "1"]
    )
    assert code == 1
    assert "cannot connect to ZooKeeper" in capsys.readouterr().err


def test_oversized_import_is_refused_before_connecting(
    data, zk: KazooClient, zk_root: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.yaml"
    src.write_text("".join(f"k{i}: {'x' * 2000}\n" for i in range(600)))
    code, _, err = data("import", "shop", str(src))
    assert code == 2 and "too large for one ZooKeeper transaction" in err
    assert zk.exists(zk_root) is None
