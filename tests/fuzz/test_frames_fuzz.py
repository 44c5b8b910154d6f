"""Fuzzing venue frames into market-data and the book (issue 15, point 8).

Three properties, each a finding if it fails:

1. Every frame parser returns a bounded value or raises `BadFrame`, whatever the payload (random
   JSON, bad numbers such as `1e1000000`, NaN, huge or negative ids, NUL, deep nesting): never
   another exception, never an unbounded decimal, id or time.
2. The market-data service fed a consistent depth/trade/mark/liquidation flow with malformed and
   mutated frames inserted never raises, counts every inserted frame as bad (with a reason logged),
   and the book a consumer builds from what it published equals the reference book built from the
   valid frames only; the trades published are exactly the valid ones; everything published encodes.
3. A real recording (`data/binance`, read by `libs.recordings`) with mutated copies of
   its lines inserted: the loader raises only `RecordingError`, and the service's book still equals
   the book rebuilt from the unmutated recording.

Bounded for CI (about a minute together); `slow` variants run many more examples.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gzip
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.binance.stream import parse_frame
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.recordings import RecordingError, ReferenceBook, parse_line, rebuild_book
from proto import codec
from proto.messages import BookResyncStarted, Trade
from services.market_data import frames
from services.market_data.frames import BadFrame, MarketKind
from services.market_data.handlers import MarketDataService
from tests.conftest import DATA_DIR
from tests.unit.test_book_sync import book_from

VENUE = "binance-usdm"
SYMBOL = "BTCUSDT"
NOW_MS = 1_700_000_000_000
SNAPSHOT_L = 10

BAD_NUMBERS: list[Any] = [
    "NaN",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "1e1000000",
    "1e-20000",
    "-1",
    "abc",
    "",
    " 1",
    "1_000",
    "0x10",
    "1e",
    "\x00",
    "12\x005",
    "9" * 100,
    None,
    True,
    [],
    {},
]
BAD_INTS: list[Any] = [-1, 2**63, 2**64, 2**70, 10**30, 1.5, "12", "1e3", None, True, False, [], {}]
BAD_SYMBOLS: list[Any] = ["ETHUSDT", "BTC\x00USDT", "btc.usdt", "BTC>", "X" * 100, 5, None, ["BTCUSDT"]]


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


BAD_LEVELS: list[Any] = [None, "x", {}, 5, [["1"]], [[]], [["100", "1", "x"], "y"], deep(50)]


# ---------------------------------------------------------------------- 1. parsers


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)
keys = ["e", "E", "T", "s", "U", "u", "pu", "b", "a", "p", "q", "a", "m", "i", "r", "o", "S", "ap", "t", "id"]
payloads = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(keys), st.one_of(json_values, st.sampled_from(BAD_NUMBERS + BAD_INTS))),
)

PARSERS: list[Callable[[Any], Any]] = [
    lambda data: frames.parse_depth_event(data, MarketKind.USDM),
    lambda data: frames.parse_depth_event(data, MarketKind.SPOT),
    frames.parse_snapshot,
    lambda data: frames.trade_from_agg_trade(VENUE, data),
    lambda data: frames.trade_from_trade(VENUE, data),
    lambda data: frames.mark_from_update(VENUE, data),
    lambda data: frames.mark_from_premium_index(VENUE, SYMBOL, data, 1),
    lambda data: frames.liquidation_from_force_order(VENUE, data),
    lambda data: frames.liquidation_from_force_order(VENUE, {"o": data, "E": 1}),
    frames.price_from_ticker,
    lambda data: frames.open_interest_from_rest(VENUE, SYMBOL, data, 1),
]


def assert_bounded(value: Any) -> None:
    """Every decimal, integer and symbol inside a parsed value is within the frame bounds."""
    if isinstance(value, Decimal):
        assert value.is_finite()
        assert not value or abs(value.adjusted()) <= frames.MAX_ADJUSTED_EXPONENT, value
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        assert -1 <= value <= frames.INT64_MAX, value  # -1: a spot event's implied `pu` when U = 0
    elif isinstance(value, list | tuple):
        for item in value:
            assert_bounded(item)
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            assert_bounded(getattr(value, name))
        codec.encode(value)  # publishable as is
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            assert_bounded(getattr(value, name))
    elif isinstance(value, str):
        assert "\x00" not in value


def check_parsers(payload: Any) -> None:
    for parse in PARSERS:
        try:
            parsed = parse(copy.deepcopy(payload))
        except BadFrame:
            continue
        assert_bounded(parsed)


@settings(max_examples=400, deadline=None)
@given(payload=payloads)
def test_parsers_when_any_payload_then_bounded_value_or_bad_frame(payload: Any) -> None:
    check_parsers(payload)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(payload=payloads)
def test_parsers_when_any_payload_then_bounded_value_or_bad_frame_long_run(payload: Any) -> None:
    check_parsers(payload)


def test_parsers_when_bad_numbers_then_each_rejected_with_a_reason() -> None:
    for bad in BAD_NUMBERS:
        with pytest.raises(BadFrame):
            frames.parse_levels([[bad, "1"]])
        with pytest.raises(BadFrame):
            frames.parse_levels([["100", bad]])
    assert frames.parse_levels([["100.5", "0E-1000000"]]) == [(Decimal("100.5"), Decimal(0))]
    with pytest.raises(BadFrame, match="out of range"):
        frames.trade_from_agg_trade(VENUE, {"a": 1, "p": "1e31", "q": "1", "T": 1})
    with pytest.raises(BadFrame, match="out of range"):
        frames.trade_from_agg_trade(VENUE, {"a": 2**63, "p": "1", "q": "1", "T": 1})


# ---------------------------------------------------------------------- 2. the service


class FakeRest:
    """The venue's REST answers market-data asks for: one depth snapshot."""

    def __init__(self, snapshot: dict) -> None:
        self.snapshot = snapshot

    async def depth(self, symbol: str, limit: int = 1000) -> dict:
        return self.snapshot

    async def open_interest(self, symbol: str) -> dict:
        return {"symbol": symbol, "openInterest": "1", "time": 1}


@dataclass
class Run:
    service: MarketDataService
    clock: ManualClock
    published: list[tuple[str, Any, str | None]] = field(default_factory=list)


def start(snapshot: dict, now_ns: int) -> Run:
    clock = ManualClock(now_ns)
    published: list[tuple[str, Any, str | None]] = []

    async def publish(subject: str, message: Any, msg_id: str | None) -> int:
        codec.encode(message)  # what the bus would do with it: it must encode
        published.append((subject, message, msg_id))
        return len(published)

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    service = MarketDataService(
        venue=VENUE,
        symbols=(SYMBOL,),
        publish=publish,  # type: ignore[arg-type]
        kv_put=kv_put,
        rest=FakeRest(snapshot),  # type: ignore[arg-type]
        open_stream=lambda url: None,  # type: ignore[arg-type,return-value]
        log=get_logger("fuzz"),
        clock=clock,
        new_id=lambda: "0000feed" * 4,
    )
    service.links.connected = True
    return Run(service, clock, published)


def book_of(published: list[tuple[str, Any, str | None]]) -> ReferenceBook:
    """What a consumer of the published snapshot and diffs holds."""
    return book_from([message for _, message, _ in published], SYMBOL)


def frame_text(stream: str, data: Any) -> str:
    return msgspec.json.encode({"stream": stream, "data": data}).decode()


bid_levels = st.lists(
    st.tuples(st.sampled_from(["99", "99.5", "98", "97.25"]), st.sampled_from(["0", "0.5", "1", "2.25"])), max_size=3
)
ask_levels = st.lists(
    st.tuples(st.sampled_from(["101", "101.5", "102", "103.75"]), st.sampled_from(["0", "0.5", "1", "2.25"])),
    max_size=3,
)


@st.composite
def valid_flows(draw: st.DrawFn) -> list[tuple[str, dict]]:
    """A consistent flow: chained depth events from one that bridges the snapshot, consecutive
    trade ids, marks and liquidations, event times never going backwards."""
    flow: list[tuple[str, dict]] = []
    first, final, previous = 5, SNAPSHOT_L, 4
    trade_id = 1
    for index in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["depth", "depth", "depth", "trade", "mark", "liquidation"]))
        time_ms = NOW_MS - 1_000 + index
        if kind == "depth":
            bids, asks = draw(bid_levels), draw(ask_levels)
            data = {"e": "depthUpdate", "E": time_ms, "T": time_ms, "s": SYMBOL, "U": first, "u": final}
            flow.append(("btcusdt@depth@100ms", data | {"pu": previous, "b": bids, "a": asks}))
            previous, first = final, final + 1
            final = first + draw(st.integers(0, 3))
        elif kind == "trade":
            data = {"e": "aggTrade", "E": time_ms, "s": SYMBOL, "a": trade_id, "p": "100", "q": "0.5"}
            flow.append(("btcusdt@aggTrade", data | {"f": 1, "l": 1, "T": time_ms, "m": False}))
            trade_id += 1
        elif kind == "mark":
            data = {"e": "markPriceUpdate", "E": time_ms, "s": SYMBOL, "p": "100.1", "i": "100", "r": "0.0001"}
            flow.append(("btcusdt@markPrice@1s", data | {"T": time_ms + 3_600_000}))
        else:
            order = {"s": SYMBOL, "S": "SELL", "q": "0.5", "p": "99", "ap": "99.5", "X": "FILLED", "T": time_ms}
            flow.append(("btcusdt@forceOrder", {"e": "forceOrder", "E": time_ms, "o": order}))
    return flow


def _set(data: dict, path: tuple, value: Any) -> dict:
    data = copy.deepcopy(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()
_MUTABLE: dict[str, list[tuple[tuple, list[Any]]]] = {
    "depth": [
        (("U",), BAD_INTS),
        (("u",), BAD_INTS),
        (("pu",), BAD_INTS),
        (("E",), BAD_INTS),
        (("s",), BAD_SYMBOLS),
        (("b",), BAD_LEVELS),
        (("a",), BAD_LEVELS),
        (("b",), [[["99", bad]] for bad in BAD_NUMBERS]),
        (("a",), [[[bad, "1"]] for bad in BAD_NUMBERS]),
        (("U",), [_DELETE]),
        (("E",), [_DELETE]),
        (("b",), [_DELETE]),
    ],
    "aggTrade": [
        (("a",), BAD_INTS),
        (("T",), BAD_INTS),
        (("E",), BAD_INTS),
        (("p",), [*BAD_NUMBERS, "0", "-100"]),
        (("q",), [*BAD_NUMBERS, "0"]),
        (("s",), BAD_SYMBOLS),
        (("a",), [_DELETE]),
    ],
    "markPrice": [
        (("p",), [*BAD_NUMBERS, "0"]),
        (("i",), BAD_NUMBERS),
        (("E",), BAD_INTS),
        (("s",), BAD_SYMBOLS),
        (("p",), [_DELETE]),
    ],
    "forceOrder": [
        (("o",), [None, "x", 5, []]),
        (("o", "S"), ["HOLD", None, 1, "buy"]),
        (("o", "q"), [*BAD_NUMBERS, "0"]),
        (("o", "p"), BAD_NUMBERS),
        (("o", "ap"), [*BAD_NUMBERS, "-1"]),
        (("o", "T"), BAD_INTS),
        (("o", "s"), [*BAD_SYMBOLS, ""]),
    ],
}


@st.composite
def bad_frames(draw: st.DrawFn, flow: list[tuple[str, dict]]) -> str:
    """One frame the service must refuse: a valid frame of the flow with one value broken, or junk."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "junk"]))
    if kind == "mutated" and flow:
        stream, data = draw(st.sampled_from(flow))
        channel = stream.split("@")[1]
        path, values = draw(st.sampled_from(_MUTABLE[channel]))
        return frame_text(stream, _set(data, path, draw(st.sampled_from(values))))
    return draw(
        st.sampled_from(
            [
                "{not json",
                "",
                "\x00",
                "[" * 5000 + "]" * 5000,
                '{"stream": "btcusdt@depth@100ms", "data": ' + "[" * 5000 + "]" * 5000 + "}",
                '{"stream": "btcusdt@depth@100ms"}',
                frame_text("btcusdt@kline_1m", {"e": "kline"}),
                frame_text("ethusdt@depth@100ms", {}),
                frame_text("btcusdt@depth\x00@100ms", {}),
                frame_text("", {}),
                '{"stream": 5, "data": {}}',
                '{"stream": "btcusdt@aggTrade", "data": {"p": 1e999}}',
                '{"stream": "btcusdt@aggTrade", "data": {"a": 123456789012345678901234567890}}',
            ]
        )
        | st.text(max_size=50).map(lambda text: text if text.strip() else "~")
    )


@st.composite
def fuzzed_flows(draw: st.DrawFn) -> tuple[list[tuple[str, dict]], list[tuple[int, str]]]:
    flow = draw(valid_flows())
    bad = draw(st.lists(bad_frames(flow), max_size=12))
    positions = draw(st.lists(st.integers(0, len(flow)), min_size=len(bad), max_size=len(bad)))
    return flow, sorted(zip(positions, bad, strict=True), key=lambda item: item[0])


def reference_of(flow: list[tuple[str, dict]], snapshot: dict) -> ReferenceBook:
    book = ReferenceBook(SYMBOL, SNAPSHOT_L)
    book.apply(frames.parse_levels(snapshot["bids"]), frames.parse_levels(snapshot["asks"]))
    for stream, data in flow:
        if "@depth" in stream:
            book.apply(frames.parse_levels(data["b"]), frames.parse_levels(data["a"]))
            book.last_update_id = data["u"]
    return book


SNAPSHOT = {"lastUpdateId": SNAPSHOT_L, "bids": [["99", "1"], ["98", "3"]], "asks": [["101", "2"]]}


async def feed(flow: list[tuple[str, dict]], bad: list[tuple[int, str]]) -> Run:
    run = start(SNAPSHOT, NOW_MS * 1_000_000)
    pending = list(bad)
    for index, (stream, data) in enumerate([*flow, ("", {})]):
        while pending and pending[0][0] == index:
            await run.service.handle_frame(parse_frame(pending.pop(0)[1]))
        if stream:
            await run.service.handle_frame(parse_frame(frame_text(stream, data)))
        await asyncio.sleep(0)  # the snapshot fetch runs as its own task
    for _ in range(100):
        if run.service.books.details()[SYMBOL]["synced"]:
            break
        await asyncio.sleep(0.001)
    await run.service.close()
    return run


def check_service(flow: list[tuple[str, dict]], bad: list[tuple[int, str]]) -> None:
    run = asyncio.run(feed(flow, bad))
    assert run.service.bad_frames == len(bad)
    if any("@depth" in stream for stream, _ in flow):
        expected, got = reference_of(flow, SNAPSHOT), book_of(run.published)
        assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)
    trades = [message.trade_id for _, message, _ in run.published if isinstance(message, Trade)]
    assert trades == [data["a"] for stream, data in flow if "aggTrade" in stream]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=fuzzed_flows())
def test_service_when_bad_frames_among_valid_then_never_raises_counts_them_and_book_exact(
    case: tuple[list[tuple[str, dict]], list[tuple[int, str]]],
) -> None:
    check_service(*case)


@pytest.mark.slow
@settings(max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=fuzzed_flows())
def test_service_when_bad_frames_among_valid_then_never_raises_counts_them_and_book_exact_long_run(
    case: tuple[list[tuple[str, dict]], list[tuple[int, str]]],
) -> None:
    check_service(*case)


# ---------------------------------------------------------------------- 3. real recordings

RECORDING = "usdm_btcusdt_20240808.gz"
RECORDED_STREAMS = ("@depth", "@markPrice", "@forceOrder")
WINDOW_LINES = 300


@functools.cache
def recording_lines(path: Path) -> tuple[str, ...]:
    """The first lines of a real recording: depth before and after its snapshot, marks, liquidations."""
    with gzip.open(path, "rt") as handle:
        lines = [line.rstrip("\n") for line in itertools.islice(handle, 5_000)]
    kept = [
        line for line in lines if "lastUpdateId" in line or any(s in line.split("{", 2)[1] for s in RECORDED_STREAMS)
    ]
    return tuple(kept[:WINDOW_LINES])


def line_mutations() -> st.SearchStrategy[Callable[[str], str]]:
    def flip(index: int, char: str) -> Callable[[str], str]:
        return lambda line: line[: index % max(len(line), 1)] + char + line[index % max(len(line), 1) + 1 :]

    def cut(index: int) -> Callable[[str], str]:
        return lambda line: line[: index % max(len(line), 1)]

    def number(bad: Any) -> Callable[[str], str]:
        text = bad if isinstance(bad, str) else msgspec.json.encode(bad).decode()
        return lambda line: line.replace('"0.', '"' + text.replace('"', "") + "0.", 1)

    return st.one_of(
        st.builds(flip, st.integers(0, 10_000), st.sampled_from(["\x00", "{", "[", '"', "9", "-", "e"])),
        st.builds(cut, st.integers(0, 10_000)),
        st.builds(number, st.sampled_from(BAD_NUMBERS)),
    )


def split_line(line: str) -> tuple[int, str]:
    head, _, body = line.partition(" ")
    return int(head), body


def check_recording(lines: tuple[str, ...], mutations: list[tuple[int, Callable[[str], str]]]) -> None:
    """The loader survives the mutated lines; the service fed the recording plus mutated copies of
    its frames keeps the book the unmutated recording rebuilds."""
    records = [record for line in lines if (record := parse_line(line, default_symbol=SYMBOL)) is not None]
    expected = rebuild_book(records, SYMBOL)
    snapshot_line = next(line for line in lines if "lastUpdateId" in line)
    extra: dict[int, list[str]] = {}
    for index, mutate in mutations:
        original = lines[index % len(lines)]
        mutated = mutate(original)
        try:
            parse_line(mutated, default_symbol=SYMBOL)
        except RecordingError:
            pass  # the loader's one error
        if "lastUpdateId" not in original:
            extra.setdefault(index % len(lines), []).append(mutated)

    async def run_it() -> Run:
        run = start(msgspec.json.decode(split_line(snapshot_line)[1]), split_line(lines[0])[0])
        for index, line in enumerate(lines):
            if "lastUpdateId" in line:
                continue
            receive_ns, body = split_line(line)
            run.clock.now = receive_ns
            await run.service.handle_frame(parse_frame(body))
            for mutated in extra.get(index, []):
                _, _, mutated_body = mutated.partition(" ")
                await run.service.handle_frame(parse_frame(mutated_body))
            await asyncio.sleep(0)
        await run.service.close()
        return run

    run = asyncio.run(run_it())
    if any(isinstance(message, BookResyncStarted) for _, message, _ in run.published):
        return  # a mutated copy with other (well-formed) ids broke the chain: detected and announced
    got = book_of(run.published)
    assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)


def recorded() -> tuple[str, ...]:
    """The recording window (not a test argument: hypothesis would print all of it on a failure)."""
    return recording_lines(DATA_DIR / "binance" / RECORDING)


@settings(max_examples=12, deadline=None)
@given(mutations=st.lists(st.tuples(st.integers(0, 10_000), line_mutations()), max_size=8))
def test_recording_when_lines_mutated_then_loader_raises_only_its_error_and_book_exact(
    mutations: list[tuple[int, Callable[[str], str]]],
) -> None:
    check_recording(recorded(), mutations)


@pytest.mark.slow
@settings(max_examples=1_000, deadline=None)
@given(mutations=st.lists(st.tuples(st.integers(0, 10_000), line_mutations()), max_size=20))
def test_recording_when_lines_mutated_then_loader_raises_only_its_error_and_book_exact_long_run(
    mutations: list[tuple[int, Callable[[str], str]]],
) -> None:
    check_recording(recorded(), mutations)


@pytest.mark.parametrize("head", ["1e1000000", "nan", "-inf", "1e", "x"])
def test_loader_when_receive_time_not_a_time_then_recording_error(head: str) -> None:
    """Found by the long run: a receive time of `1e1000000` overflowed inside the loader."""
    line = head + ' {"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"1"}}'
    with pytest.raises(RecordingError):
        parse_line(line)
