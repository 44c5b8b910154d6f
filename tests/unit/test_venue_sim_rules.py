"""Binance's connection rules as the simulator keeps them (pure, time passed in)."""

from __future__ import annotations

from services.venue_sim.config import config_from
from services.venue_sim.domain.venue_rules import MAX_BAN_S, NS_PER_S, IpBan, MessageRate


def test_message_rate_when_more_than_limit_in_one_second_then_refused_and_allowed_after() -> None:
    rate = MessageRate(10)
    assert all(rate.allow(i * 50_000_000) for i in range(10))  # 10 in 0.5 s
    assert not rate.allow(600_000_000)  # the 11th within the same second
    assert rate.allow(1_700_000_000)  # a second later the window is clear again


def test_ip_ban_when_requests_during_it_then_escalates_to_at_most_three_days() -> None:
    ban = IpBan(escalation=2.0)
    ban.start(0, 120)
    assert ban.active(119 * NS_PER_S) and not ban.active(120 * NS_PER_S)
    assert ban.retry_after_s(NS_PER_S // 2) == 120
    ban.refuse(10 * NS_PER_S)
    assert ban.duration_s == 240 and ban.retry_after_s(10 * NS_PER_S) == 240 and ban.refused == 1
    for _ in range(20):
        ban.refuse(20 * NS_PER_S)
    assert ban.duration_s == MAX_BAN_S and ban.bans == 1


def test_ip_ban_when_escalation_one_then_fixed_length() -> None:
    ban = IpBan(escalation=1.0)
    ban.start(0, 2)
    ban.refuse(NS_PER_S)
    assert ban.retry_after_s(NS_PER_S) == 1 and ban.refused == 1 and not ban.active(2 * NS_PER_S)


def test_config_when_flags_and_variables_then_rules_binance_defaults_otherwise() -> None:
    defaults = config_from([], {})
    assert (defaults.rules.lifetime_s, defaults.rules.pong_timeout_s) == (86_400.0, 600.0)
    assert (defaults.rules.max_incoming_per_s, defaults.rules.max_streams) == (10, 1024)
    assert defaults.rules.listen_key_validity_s == 3_600.0 and defaults.ban_escalation == 2.0
    config = config_from(["--ws-lifetime", "5", "--ban-escalation", "1"], {"BULWARK_SIM_LISTEN_KEY_VALIDITY_S": "2"})
    assert (config.rules.lifetime_s, config.rules.listen_key_validity_s, config.ban_escalation) == (5.0, 2.0, 1.0)
