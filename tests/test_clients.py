"""Providers own their configuration; sessions can be injected; one text helper for all."""

from __future__ import annotations

import aiohttp
import pytest

from llmbatch import CompletionRequest
from llmbatch.clients import (
    DEFAULT_KEY_ENV,
    PROVIDERS,
    AnthropicClient,
    ClientSpec,
    FakeClient,
    GeminiClient,
    OpenAIClient,
    ProviderClient,
)
from llmbatch.simulate import Simulator, SimulatorConfig
from llmbatch.text import chars_to_tokens, flatten_messages


def test_providers_declare_their_configuration_as_class_attributes() -> None:
    assert OpenAIClient.key_env == "OPENAI_API_KEY"
    assert OpenAIClient.base_url_env == "OPENAI_BASE_URL"
    assert OpenAIClient.default_base_url == "https://api.openai.com/v1"
    assert AnthropicClient.key_env == "ANTHROPIC_API_KEY"
    assert AnthropicClient.default_base_url == "https://api.anthropic.com"
    assert GeminiClient.key_env == "GEMINI_API_KEY"
    assert GeminiClient.default_base_url == "https://generativelanguage.googleapis.com"
    assert {"openai": OpenAIClient, "anthropic": AnthropicClient, "gemini": GeminiClient} == (
        PROVIDERS
    )
    assert DEFAULT_KEY_ENV == {
        "openai": "OPENAI_API_KEY",
        "anthropic": "ANTHROPIC_API_KEY",
        "gemini": "GEMINI_API_KEY",
    }
    assert all(issubclass(cls, ProviderClient) for cls in PROVIDERS.values())
    assert OpenAIClient(api_key="k1234567").auth_headers("k") == {"Authorization": "Bearer k"}
    assert AnthropicClient(api_key="k").auth_headers("k") == {"x-api-key": "k"}
    assert GeminiClient(api_key="k").auth_headers("k") == {"x-goog-api-key": "k"}


def test_key_and_base_url_come_from_the_provider_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/anthropic")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert AnthropicClient().base_url == "http://127.0.0.1:9/anthropic"
    assert OpenAIClient().base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(Exception, match="ANTHROPIC_API_KEY"):
        AnthropicClient(require_api_key=True)


def test_a_new_provider_is_a_few_class_attributes() -> None:
    class Mistral(OpenAIClient):
        name = "mistral"
        key_env = "MISTRAL_API_KEY"
        base_url_env = "MISTRAL_BASE_URL"
        default_base_url = "https://api.mistral.ai/v1"

    client = Mistral(api_key="m-123456789")
    assert client.base_url == "https://api.mistral.ai/v1"
    assert "m-123456789" not in client.redactor("key m-123456789")


def test_client_spec_provider_is_a_closed_set() -> None:
    valid = r"unknown provider 'opanai': use one of anthropic, gemini, openai"
    with pytest.raises(ValueError, match=valid):
        ClientSpec(provider="opanai")
    spec = ClientSpec(provider="anthropic", base_url="http://127.0.0.1:9", model="m")
    assert spec.key_env == "ANTHROPIC_API_KEY" and spec.max_connections is None
    assert ClientSpec(api_key_env="MY_KEY").key_env == "MY_KEY"
    assert isinstance(spec.build(), AnthropicClient)
    assert isinstance(ClientSpec().build(), OpenAIClient)
    assert ClientSpec(max_connections=12).build().http.max_connections == 12


async def test_an_injected_session_is_used_and_left_open() -> None:
    async with Simulator(SimulatorConfig()) as sim, aiohttp.ClientSession() as session:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="k", model="m", session=session)
        resp = await client.complete(CompletionRequest(prompt="hi"))
        await client.aclose()
        assert resp.content and not session.closed
        again = await client.complete(CompletionRequest(prompt="hi"))  # still the same session
        assert again.content == resp.content
        assert sim.stats()["received"] == 2


def test_one_message_flattening_and_token_estimate() -> None:
    messages = [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image_url"}]},
        {"role": "user", "content": "B"},
    ]
    assert flatten_messages(messages, system="S0", prompt="P") == "S0\nSys\nA\nB\nP"
    req = CompletionRequest(messages=messages, system="S0", prompt="P")
    assert req.text_length() == len("S0SysABP")
    assert chars_to_tokens("x" * 9) == 3 and chars_to_tokens(8) == 2
    assert AnthropicClient(api_key="k").body_for(req)["system"] == "S0\n\nSys"
    fake = FakeClient()
    assert fake.model == "fake-model"


def test_url_credentials_and_a_bearer_key_clash_at_construction_not_per_request() -> None:
    with pytest.raises(ValueError, match="holds credentials") as info:
        OpenAIClient(api_key="sk-abcdef123456", base_url="http://u:secretpw@127.0.0.1:9/v1")
    assert "secretpw" not in str(info.value)
    client = AnthropicClient(api_key="k-123456", base_url="http://u:secretpw@127.0.0.1:9")
    assert "secretpw" not in repr(client)  # x-api-key and Basic credentials can coexist
