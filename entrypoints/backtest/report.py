"""A backtest's output: the JSON document (`--json`, byte-identical for the same input), the text
summary, and the HTML page of `--report DIR` (one self-contained file: inline SVG equity curve,
the figures and the trade list; no script, no network)."""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.venue_sim.domain import Exchange

from .engine import BacktestRun, ClosedTrade, FillRow
from .metrics import summarize

REPORT_VERSION = 1
"""Version of the JSON document (new fields may appear; existing ones keep their meaning)."""
REPORT_FILE = "backtest.html"


def _plain(value: Decimal) -> str:
    return format(value, "f")


def _jsonable(value: Any) -> Any:
    match value:
        case Decimal():
            return _plain(value)
        case Mapping():
            return {str(key): _jsonable(item) for key, item in sorted(value.items())}
        case tuple() | list():
            return [_jsonable(item) for item in value]
        case _:
            return value


def _trade(trade: ClosedTrade) -> dict[str, Any]:
    row = {key: _jsonable(value) for key, value in dataclasses.asdict(trade).items()}
    row["net_pnl"] = _plain(trade.net_pnl)
    return row


def _fill(fill: FillRow) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in dataclasses.asdict(fill).items()}


def document(run: BacktestRun, recordings: Sequence[str]) -> dict[str, Any]:
    """Everything a run produced, as JSON-ready data (no wall-clock time: the same input gives the
    same document)."""
    instance, replay, options = run.instance, run.replay, run.options
    parameters = {f.name: _jsonable(getattr(instance.config, f.name)) for f in dataclasses.fields(instance.config)}
    return {
        "report_version": REPORT_VERSION,
        "strategy": {"name": instance.name, "kind": instance.kind, "parameters": parameters},
        "recordings": list(recordings),
        "market": replay.market,
        "symbols": sorted(replay.symbols),
        "start_ns": replay.start_ns,
        "end_ns": replay.end_ns,
        "duration_s": round((replay.end_ns - replay.start_ns) / 1e9, 3),
        "events_replayed": run.events,
        "options": {
            "tick_s": options.tick_s,
            "sample_s": options.sample_s,
            "initial_balance": _plain(options.initial_balance),
            "taker_fee": _plain(Exchange.TAKER_FEE),
            "maker_fee": _plain(Exchange.MAKER_FEE),
        },
        "metrics": summarize(run),
        "signals": run.signals,
        "transitions": run.transitions,
        "final_state": run.final_state,
        "trades": [_trade(trade) for trade in run.trades],
        "fills": [_fill(fill) for fill in run.fills],
        "rejections": run.rejections,
        "crashes": run.crashes,
        "equity": [[ts, _plain(value)] for ts, value in run.equity],
    }


def to_json(doc: Mapping[str, Any]) -> str:
    """The document as stable JSON (sorted keys)."""
    return json.dumps(doc, indent=2, sort_keys=True)


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _number(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _metric_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    m = doc["metrics"]
    return [
        ("trades", str(m["trades"])),
        ("realized PnL (USDT)", _number(m["realized_pnl"])),
        ("fees (USDT)", _number(m["fees"])),
        ("net PnL (USDT)", _number(m["net_pnl"])),
        ("win rate", _percent(m["win_rate"])),
        ("average win / loss (USDT)", f"{_number(m['average_win'])} / {_number(m['average_loss'])}"),
        ("Sharpe (annualized)", _number(m["sharpe"])),
        ("max drawdown (USDT)", f"{m['max_drawdown']} ({m['max_drawdown_pct']} %)"),
        ("exposure", _percent(m["exposure"])),
    ]


_TRADE_COLUMNS = (
    "#",
    "symbol",
    "side",
    "qty",
    "entry",
    "entry price",
    "exit",
    "exit price",
    "PnL",
    "fees",
    "net",
    "exit by",
)


def _trade_cells(index: int, trade: Mapping[str, Any]) -> list[str]:
    exit_why = trade["exit_role"] + (f": {trade['exit_reason']}" if trade["exit_reason"] else "")
    return [
        str(index),
        trade["symbol"],
        trade["side"],
        trade["quantity"],
        _time(trade["entry_ns"]),
        trade["entry_price"],
        _time(trade["exit_ns"]),
        trade["exit_price"],
        trade["pnl"],
        trade["fees"],
        trade["net_pnl"],
        exit_why,
    ]


def to_text(doc: Mapping[str, Any]) -> str:
    """The human summary the command prints."""
    strategy = doc["strategy"]
    lines = [
        f"backtest {strategy['name']} ({strategy['kind']}) on {', '.join(Path(r).name for r in doc['recordings'])}",
        f"  {', '.join(doc['symbols'])} ({doc['market']}), {doc['duration_s']} s from {_time(doc['start_ns'])} UTC, "
        f"{doc['events_replayed']} events; {doc['signals']} signals, {len(doc['rejections'])} rejected by the venue, "
        f"{len(doc['crashes'])} crashes, ends {doc['final_state']}",
    ]
    lines += [f"  {name:<27} {value}" for name, value in _metric_rows(doc)]
    if doc["trades"]:
        rows = [list(_TRADE_COLUMNS)] + [_trade_cells(i, t) for i, t in enumerate(doc["trades"], 1)]
        widths = [max(len(row[c]) for row in rows) for c in range(len(_TRADE_COLUMNS) - 1)]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    for rejection in doc["rejections"][:10]:
        lines.append(f"  rejected {rejection['role']} {rejection['symbol']}: {rejection['code']} {rejection['error']}")
    for crash in doc["crashes"][:10]:
        lines.append(f"  crash at {_time(int(crash['time_ns']))}: {crash['error']}")
    return "\n".join(lines)


def equity_svg(equity: Sequence[Sequence[Any]], trades: Sequence[Mapping[str, Any]], width: int = 900) -> str:
    """The equity curve (net PnL over time) as an inline SVG, round trips shaded."""
    height, pad = 280, 48
    points = [(int(ts), float(value)) for ts, value in equity]
    if not points:
        return ""
    t0, t1 = points[0][0], max(points[-1][0], points[0][0] + 1)
    low, high = min(min(v for _, v in points), 0.0), max(max(v for _, v in points), 0.0)
    if high - low < 1e-9:
        low, high = low - 1, high + 1

    def x(ts: int) -> float:
        return pad + (ts - t0) / (t1 - t0) * (width - 2 * pad)

    def y(value: float) -> float:
        return height - pad - (value - low) / (high - low) * (height - 2 * pad)

    shades = "".join(
        f'<rect x="{x(t["entry_ns"]):.1f}" y="{pad}" width="{max(1.0, x(t["exit_ns"]) - x(t["entry_ns"])):.1f}" '
        f'height="{height - 2 * pad}" fill="{"#d8f0d8" if Decimal(t["net_pnl"]) > 0 else "#f4d8d8"}"/>'
        for t in trades
    )
    path = " ".join(f"{x(ts):.1f},{y(v):.1f}" for ts, v in points)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="equity curve">'
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>{shades}'
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999" stroke-dasharray="4 3"/>'
        f'<polyline fill="none" stroke="#1f5fa8" stroke-width="1.6" points="{path}"/>'
        f'<text x="4" y="{y(high) + 4:.1f}" font-size="11">{high:.4f}</text>'
        f'<text x="4" y="{y(low) + 4:.1f}" font-size="11">{low:.4f}</text>'
        f'<text x="{pad}" y="{height - 16}" font-size="11">{html.escape(_time(t0))}</text>'
        f'<text x="{width - pad}" y="{height - 16}" font-size="11" text-anchor="end">{html.escape(_time(t1))}</text>'
        "</svg>"
    )


_STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
    "td:last-child,th:last-child{text-align:left}.win{background:#eef8ee}.loss{background:#fbeeee}"
)


def to_html(doc: Mapping[str, Any]) -> str:
    """The report page: figures, equity curve and trade list in one file."""
    esc = html.escape
    strategy = doc["strategy"]
    title = f"Backtest {strategy['name']} ({strategy['kind']})"
    metrics = "".join(f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in _metric_rows(doc))
    head = "".join(f"<th>{esc(name)}</th>" for name in _TRADE_COLUMNS)
    body = "".join(
        f'<tr class="{"win" if Decimal(t["net_pnl"]) > 0 else "loss"}">'
        + "".join(f"<td>{esc(cell)}</td>" for cell in _trade_cells(i, t))
        + "</tr>"
        for i, t in enumerate(doc["trades"], 1)
    )
    parameters = "".join(
        f"<tr><th>{esc(key)}</th><td>{esc(json.dumps(value))}</td></tr>"
        for key, value in doc["strategy"]["parameters"].items()
    )
    recordings = ", ".join(esc(Path(r).name) for r in doc["recordings"])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"
        f"<p>{recordings}: {esc(', '.join(doc['symbols']))} ({esc(doc['market'])}), {doc['duration_s']} s from "
        f"{esc(_time(doc['start_ns']))} UTC, {doc['events_replayed']} events, {doc['signals']} signals, "
        f"{len(doc['rejections'])} rejected by the venue, {len(doc['crashes'])} crashes.</p>"
        f"<h2>Equity (net PnL, USDT)</h2>{equity_svg(doc['equity'], doc['trades'])}"
        f"<h2>Figures</h2><table>{metrics}</table>"
        f"<h2>Trades ({len(doc['trades'])})</h2><table><tr>{head}</tr>{body}</table>"
        f"<h2>Parameters</h2><table>{parameters}</table>"
        "<p>Fills: the simulator's matching engine against the recorded book (market orders walk the "
        "levels at the signal's time, no queue position, no market impact on later data); fees: the "
        "simulator's taker fee. See docs/strategies.md, Backtest.</p></body></html>\n"
    )


def write_report(doc: Mapping[str, Any], directory: Path) -> Path:
    """Write the HTML page (and nothing else) into `directory`; returns its path.

    Raises:
        OSError: the directory cannot be created or written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / REPORT_FILE
    target.write_text(to_html(doc), encoding="utf-8")
    return target
