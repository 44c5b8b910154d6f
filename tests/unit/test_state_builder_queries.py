"""state-builder's request/reply bodies and KV values come from `proto` and keep the bytes of the
previous version: the `svc.state-builder.book` request, reply and errors, the `svc.market-data.resync`
request it sends, and the hot state it writes to KV."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from libs.clock import ManualClock
from libs.logging import get_logger
from proto import codec, subjects
from proto.enums import HotStateStatus
from proto.envelope import Message
from proto.kv import decode_value
from proto.messages import HotStateRecord
from proto.replies import BookReply, ErrorDetail, ErrorReply, decode_reply
from services.state_builder import queries
from services.state_builder.domain import HotState, OrderBook
from services.state_builder.handlers import StateBuilder
from services.state_builder.market import SymbolState

SYMBOL = "BTCUSDT"
T0 = 1_700_000_000_000_000_000


def book_state() -> dict[str, SymbolState]:
    book = OrderBook(SYMBOL)
    book.apply_snapshot(
        41,
        [(Decimal("61800.10"), Decimal("0.5")), (Decimal("61799"), Decimal("1E+2"))],
        [(Decimal("61801.2"), Decimal("0.00000001")), (Decimal("61802"), Decimal("3"))],
    )
    return {SYMBOL: SymbolState(book, HotState(SYMBOL, ManualClock(T0)))}


def previous_book_reply(symbols: dict[str, SymbolState], symbol: str, depth: int) -> bytes:
    """What the previous version encoded by hand (a dict with decimal strings)."""
    state = symbols[symbol]
    bids, asks = state.book.top(depth)
    return msgspec.json.encode(
        {
            "symbol": symbol,
            "status": state.hot.status.value,
            "last_update_id": state.book.last_update_id,
            "bids": [[str(price), str(qty)] for price, qty in bids],
            "asks": [[str(price), str(qty)] for price, qty in asks],
        }
    )


def previous_error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


@pytest.mark.parametrize("depth", [1, 2, 20])
def test_book_reply_when_encoded_from_proto_then_bytes_of_the_previous_version(depth: int) -> None:
    symbols = book_state()

    raw = queries.book_reply(symbols, msgspec.json.encode({"symbol": "btcusdt", "depth": depth}))

    assert raw == previous_book_reply(symbols, SYMBOL, depth)
    reply = decode_reply(BookReply, raw)
    assert isinstance(reply, BookReply) and reply.status == HotStateStatus.INVALID
    assert reply.bids[0] == (Decimal("61800.10"), Decimal("0.5"))


def test_book_reply_when_depth_absent_then_default_depth() -> None:
    symbols = book_state()

    assert queries.book_reply(symbols, b'{"symbol": "BTCUSDT"}') == previous_book_reply(
        symbols, SYMBOL, queries.DEFAULT_DEPTH
    )


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b'{"symbol": "BTCUSDT", "depth": 0}', "bad_request", "depth must be 1..1000"),
        (b'{"symbol": "BTCUSDT", "depth": 1001}', "bad_request", "depth must be 1..1000"),
        (b'{"symbol": "DOGEUSDT"}', "not_found", "unknown symbol DOGEUSDT"),
    ],
)
def test_book_reply_when_refused_then_error_reply_of_previous_bytes(payload: bytes, code: str, message: str) -> None:
    raw = queries.book_reply(book_state(), payload)

    assert raw == previous_error(code, message)
    assert decode_reply(BookReply, raw) == ErrorReply(error=ErrorDetail(code=code, message=message))


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"depth": 5}', b'{"symbol": "BTCUSDT", "depth": "many"}'])
def test_book_reply_when_request_malformed_then_bad_request(payload: bytes) -> None:
    reply = decode_reply(BookReply, queries.book_reply(book_state(), payload))

    assert isinstance(reply, ErrorReply) and reply.error.code == "bad_request"


class Peers:
    """What the state-builder writes to KV and asks of market-data; every request gets `reply`."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.written: dict[str, bytes] = {}
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, message: Message) -> int:
        return 1

    async def kv_put(self, key: str, value: bytes) -> int:
        self.written[key] = value
        return 1

    async def request(self, subject: str, payload: bytes) -> bytes:
        self.sent.append((subject, payload))
        return self.reply

    def builder(self) -> StateBuilder:
        return StateBuilder(
            symbols=(SYMBOL,),
            publish=self.publish,
            kv_put=self.kv_put,
            request=self.request,
            clock=ManualClock(T0),
            log=get_logger("test"),
        )


@pytest.mark.parametrize(
    "reply",
    [
        b'{"symbol": "BTCUSDT", "status": "resyncing"}',
        b'{"error": {"code": "not_found", "message": "unknown symbol BTCUSDT"}}',
        b'{"unexpected": true}',
    ],
)
async def test_request_resync_when_answered_then_request_bytes_of_the_previous_version(reply: bytes) -> None:
    peers = Peers(reply)

    assert await peers.builder().request_resync(SYMBOL, attempts=1)
    assert peers.sent == [("svc.market-data.resync", msgspec.json.encode({"symbol": SYMBOL}))]


async def test_hot_state_kv_value_when_written_then_proto_value_with_bytes_of_the_previous_version() -> None:
    peers = Peers(b"{}")

    await peers.builder().publish_initial()

    raw = peers.written[subjects.key_hot_state(SYMBOL)]
    value = decode_value(HotStateRecord, raw)
    assert value is not None and (value.status, value.ts_ns) == (HotStateStatus.INVALID, T0)
    assert raw == codec.encode(value)  # what the previous version wrote (`proto.codec.encode`)
