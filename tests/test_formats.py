"""Input line parsing: both shapes, pass-through of unknown body fields, precise errors."""

from __future__ import annotations

import orjson

from llmbatch.clients import OpenAIClient
from llmbatch.io.formats import BadLine, InputItem, parse_line


def parse(obj: object) -> InputItem | BadLine | None:
    return parse_line(orjson.dumps(obj), 4)


def test_batch_line_keeps_unknown_body_fields_for_the_provider() -> None:
    item = parse(
        {
            "custom_id": "x",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt",
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_object"},
                "logit_bias": {"50256": -100},
                "max_tokens": 5,
            },
        }
    )
    assert isinstance(item, InputItem) and item.id == "x"
    body = OpenAIClient(api_key="k").body_for(item.request)
    assert body == {
        "model": "gpt",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
        "max_tokens": 5,
        "logit_bias": {"50256": -100},
    }


def test_embeddings_with_a_list_input_passes_the_list_through() -> None:
    item = parse({"custom_id": "e", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}})
    assert isinstance(item, InputItem)
    assert OpenAIClient(api_key="k").body_for(item.request)["input"] == ["a", "b"]


def test_errors_name_the_line_and_the_field() -> None:
    cases = [
        ({"custom_id": "", "url": "/v1/chat/completions", "body": {}}, "custom_id must be"),
        ({"custom_id": "a", "url": "/v1/chat/completions", "body": {}}, "body.messages"),
        ({"custom_id": "a", "method": "GET", "url": "/v1/embeddings", "body": {}}, "method"),
        ({"id": "a", "prompt": "x", "max_tokens": -1}, "max_tokens must be a positive"),
        ({"id": "a", "prompt": "x", "response_format": "xml"}, "response_format 'xml'"),
        ({"id": True, "prompt": "x"}, "id must be"),
        ([1, 2], "expected a JSON object"),
        ({"foo": 1}, "no id or custom_id"),
    ]
    for obj, message in cases:
        bad = parse(obj)
        assert isinstance(bad, BadLine), obj
        assert str(bad).startswith("line 4: ") and message in str(bad), (obj, str(bad))


def test_blank_lines_are_skipped() -> None:
    assert parse_line(b"   \n", 1) is None
