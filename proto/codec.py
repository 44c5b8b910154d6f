"""Encoders and decoders built once and reused (msgspec JSON)."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from proto.envelope import Message
from proto.messages import AnyMessage

T = TypeVar("T")

_encoder = msgspec.json.Encoder(decimal_format="string")
_any_decoder: msgspec.json.Decoder[AnyMessage] = msgspec.json.Decoder(AnyMessage)
_typed_decoders: dict[type, msgspec.json.Decoder] = {}


def encode(message: msgspec.Struct) -> bytes:
    """Encode any contract struct as JSON bytes."""
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    """Decode bytes into whichever tagged message they hold.

    Raises:
        msgspec.ValidationError / msgspec.DecodeError: the bytes are not a valid message.
    """
    return _any_decoder.decode(data)


def decode_as(data: bytes, kind: type[T]) -> T:
    """Decode bytes as one specific type (raises if they are anything else)."""
    decoder = _typed_decoders.get(kind)
    if decoder is None:
        decoder = _typed_decoders[kind] = msgspec.json.Decoder(kind)
    return decoder.decode(data)
