"""`baton check` and `baton run` on good and bad input: one clear line, a non-zero exit, never a
traceback."""

from __future__ import annotations

import socket
import subprocess

import pytest
import yaml

from .conftest import BATON, free_port, tcp_bootstrap

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"


def run(*args, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([BATON, *args], capture_output=True, text=True, timeout=timeout)


def write(tmp_path, data, name="bootstrap.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def assert_clean_failure(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_check_accepts_the_examples(example):
    result = run("check", "-c", str(EXAMPLES / example))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_check_reports_every_error(tmp_path):
    bootstrap = tcp_bootstrap(free_port(), free_port(), [9])
    tcp = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    tcp["cluster"] = "nowhere"
    tcp["max_downstream_connection_duration"] = "5s"
    bootstrap["static_resources"]["clusters"][0]["lb_policy"] = "LOAD_BALANCING_POLICY_CONFIG"
    result = run("check", "-c", write(tmp_path, bootstrap))
    assert_clean_failure(
        result,
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.max_downstream_connection_duration: not supported",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster: unknown cluster 'nowhere'",
        "static_resources.clusters[0].lb_policy")
    assert len(result.stderr.strip().splitlines()) == 3


@pytest.mark.parametrize("content, needle", [
    ("admin: [unclosed", "not valid YAML"),
    ("", "empty file"),
    ("- just\n- a list\n", "must be a mapping"),
    ("static_resources:\n  listeners: 5\n", "static_resources.listeners"),
])
def test_run_rejects_bad_files(tmp_path, content, needle):
    result = run("run", "-c", write(tmp_path, content), "--runtime-dir", str(tmp_path / "run"))
    assert_clean_failure(result, needle)


def test_run_missing_file(tmp_path):
    result = run("run", "-c", str(tmp_path / "absent.yaml"), "--runtime-dir", str(tmp_path / "run"))
    assert_clean_failure(result, "absent.yaml: no such file")
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_port_in_use(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    path = write(tmp_path, tcp_bootstrap(free_port(), port, [9]))
    result = run("run", "-c", path, "--runtime-dir", str(tmp_path / "run"))
    assert_clean_failure(result, f"cannot bind 127.0.0.1:{port}: Address already in use")
    assert len(result.stderr.strip().splitlines()) == 1
    taken.close()


def test_run_unresolvable_strict_dns(tmp_path):
    bootstrap = tcp_bootstrap(free_port(), free_port(), [9])
    cluster = bootstrap["static_resources"]["clusters"][0]
    cluster["type"] = "STRICT_DNS"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = \
        "no-such-host.invalid"
    result = run("run", "-c", write(tmp_path, bootstrap), "--runtime-dir", str(tmp_path / "run"))
    assert_clean_failure(result, "cluster 'backend': cannot resolve no-such-host.invalid")
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_unknown_cluster(tmp_path):
    bootstrap = tcp_bootstrap(free_port(), free_port(), [9])
    bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["cluster"] = "ghost"
    result = run("run", "-c", write(tmp_path, bootstrap), "--runtime-dir", str(tmp_path / "run"))
    assert_clean_failure(result, "unknown cluster 'ghost'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_bad_concurrency(tmp_path):
    path = write(tmp_path, tcp_bootstrap(free_port(), free_port(), [9]))
    result = run("run", "-c", path, "--concurrency", "0", "--runtime-dir", str(tmp_path / "run"))
    assert_clean_failure(result, "--concurrency must be at least 1")


def test_second_master_on_the_same_runtime_dir_is_refused(baton, tmp_path):
    b = baton(tcp_bootstrap(free_port(), free_port(), [9]), concurrency=1)
    path = write(tmp_path, tcp_bootstrap(free_port(), free_port(), [9]), "other.yaml")
    result = run("run", "-c", path, "--runtime-dir", str(b.runtime_dir))
    assert_clean_failure(result, "another baton master is running")
    assert b.admin("/ready")[0] == 200


def test_status_without_a_master(tmp_path):
    result = run("status", "--runtime-dir", str(tmp_path / "nothing"))
    assert_clean_failure(result, "no baton running")


def test_runtime_dir_is_private(baton):
    import os
    import stat
    b = baton(tcp_bootstrap(free_port(), free_port(), [9]), concurrency=1)
    assert stat.S_IMODE(os.stat(b.runtime_dir).st_mode) == 0o700
    assert (b.runtime_dir / "control.sock").exists()
