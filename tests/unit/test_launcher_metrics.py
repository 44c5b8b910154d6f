"""`bulwark up` gives every service a Prometheus port: free ones by default, consecutive ones from
`--metrics-port`, never one another server or service already has."""

from __future__ import annotations

import configparser
import socket
from pathlib import Path

import pytest

from entrypoints import infra
from entrypoints.cli import build_parser
from entrypoints.launcher import (
    LaunchConfig,
    LaunchError,
    bus_components,
    check_ports,
    metrics_ports,
    service_env,
    write_supervisor_config,
)


def _specs(tmp_path: Path) -> dict[str, infra.ServerSpec]:
    return {
        "nats": infra.ServerSpec("nats", ["/bin/nats-server"], 4222),
        "postgres": infra.ServerSpec("postgres", ["/bin/postgres"], 5432),
        "valkey": infra.ServerSpec("valkey", ["/bin/valkey-server"], 6379),
    }


def _program_env(tmp_path: Path, config: LaunchConfig) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read(write_supervisor_config(config, _specs(tmp_path)))
    return {
        section.removeprefix("program:"): parser[section].get("environment", "")
        for section in parser
        if section.startswith("program:")
    }


def test_metrics_ports_when_base_given_then_one_distinct_port_per_service_and_none_for_the_simulator(
    tmp_path: Path,
) -> None:
    config = LaunchConfig(data_dir=tmp_path, metrics_port=9500, backup_venue="b", strategies=("trend", "imbalance"))

    ports = metrics_ports(config)

    assert set(ports) == set(bus_components(config))
    assert sorted(ports.values()) == list(range(9500, 9500 + len(ports)))
    environments = _program_env(tmp_path, config)
    for program, port in ports.items():
        assert f'BULWARK_METRICS_PORT="{port}"' in environments[program], program
    assert "BULWARK_METRICS_PORT" not in environments["venue-sim"]


def test_metrics_ports_when_not_given_then_each_service_takes_a_free_port_on_the_system_host(tmp_path: Path) -> None:
    from entrypoints.launcher import load_credentials

    config = LaunchConfig(data_dir=tmp_path, host="127.0.0.2")

    env = service_env(config, load_credentials(tmp_path))

    assert metrics_ports(config) == {}
    assert env["BULWARK_METRICS_PORT"] == "0" and env["BULWARK_METRICS_HOST"] == "127.0.0.2"
    assert all("BULWARK_METRICS_PORT" not in value for value in _program_env(tmp_path, config).values())


def test_check_ports_when_metrics_ports_overlap_another_server_then_refused_with_the_flags(tmp_path: Path) -> None:
    config = LaunchConfig(data_dir=tmp_path, metrics_port=7999, gateway_port=8001)

    with pytest.raises(LaunchError, match=r"--gateway-port 8001 is the metrics port of .* \(--metrics-port 7999\)"):
        check_ports(config)


def test_check_ports_when_a_metrics_port_is_busy_then_error_names_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = {
            name: infra.free_port()
            for name in ("gateway_port", "venue_port", "nats_port", "nats_monitor_port", "pg_port", "redis_port")
        }
        config = LaunchConfig(data_dir=tmp_path, metrics_port=port, **others)  # type: ignore[arg-type]
        with pytest.raises(LaunchError, match=f"--metrics-port {port} "):
            check_ports(config)


def test_up_parser_when_metrics_port_flag_then_parsed_and_defaults_to_free_ports() -> None:
    assert build_parser().parse_args(["up"]).metrics_port == 0
    assert build_parser().parse_args(["up", "--metrics-port", "9100"]).metrics_port == 9100
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--metrics-port", "70000"])
