"""Heartbeat lists' serializer (`app.broker.FAST_JSON`): orjson, each body decoded once per worker."""

from __future__ import annotations

from kombu.serialization import dumps, loads

from app.broker import FAST_JSON, FAST_JSON_CONTENT_TYPE, _DecodeOnce


def test_the_second_reader_of_the_same_text_gets_the_value_the_first_made_and_nobody_a_third() -> None:
    """The worker's protocol check, then the task: one decode; a third read decodes afresh."""
    decode = _DecodeOnce()
    text = '[[{"heartbeats": [1, 2]}], {}, {}]'
    first = decode(text)
    second = decode(str(text.encode().decode()))  # equal text, another object (as kombu makes it)
    assert second is first
    third = decode(text)
    assert third == first and third is not first


def test_other_text_is_decoded_for_itself() -> None:
    decode = _DecodeOnce()
    assert decode("[1]") == [1]
    assert decode("[2]") == [2]
    assert decode(b"[2]") == [2]


def test_kombu_round_trips_a_heartbeat_list_through_the_serializer() -> None:
    body = [[{"v": 1, "lists": [{"taskId": "t", "progress": 5}]}], {}, {}]
    content_type, encoding, data = dumps(body, serializer=FAST_JSON)
    assert content_type == FAST_JSON_CONTENT_TYPE
    assert loads(data, content_type, encoding) == body
    assert loads(data, content_type, encoding) == body  # the memo's hit
    assert loads(data, content_type, encoding) == body  # and past it
