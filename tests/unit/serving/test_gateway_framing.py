"""The gateway's pure pieces: SSE framing, chunk shapes, request parsing, the prompt bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.serving import gateway, metering
from workers.tokenizer import ByteTokenizer, load_tokenizer


def _call(kind: gateway.Kind, include_usage: bool) -> gateway.Call:
    parsed = gateway.Parsed(
        kind, "ep", "ep", None, [{"role": "user", "content": "hi"}], None, 8, {}, True,
        include_usage,
    )  # fmt: skip
    return gateway.Call(
        engine=None,  # type: ignore[arg-type]
        state=None,  # type: ignore[arg-type]
        principal=None,  # type: ignore[arg-type]
        endpoint=None,  # type: ignore[arg-type]
        conf=None,  # type: ignore[arg-type]
        parsed=parsed,
        max_tokens=8,
        reservation="req_1",
        reserved=10,
        created=123,
    )


def _data(frame: bytes) -> object:
    text = frame.decode()
    assert text.startswith("data: ") and text.endswith("\n\n") and text.count("\n\n") == 1
    body = text[len("data: ") : -2]
    return body if body == "[DONE]" else json.loads(body)


def test_an_event_is_one_data_line_and_a_blank_line() -> None:
    assert gateway.DONE == b"data: [DONE]\n\n"
    assert _data(gateway.sse({"a": "줄\n바꿈"})) == {"a": "줄\n바꿈"}  # newlines stay escaped


def test_chat_chunks_carry_deltas_and_a_null_usage_when_usage_is_asked_for() -> None:
    call = _call("chat", include_usage=True)
    first = gateway.chunk(call, None, None, role=True)
    assert first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-req_1"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["usage"] is None
    last = gateway.usage_chunk(call, 3, 4)
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
    }  # fmt: skip
    assert "usage" not in gateway.chunk(_call("chat", include_usage=False), "x", None)


def test_text_completion_chunks() -> None:
    call = _call("completion", include_usage=False)
    piece = gateway.chunk(call, "ab", "length")
    assert piece["object"] == "text_completion" and piece["id"] == "cmpl-req_1"
    assert piece["choices"][0]["text"] == "ab" and piece["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, None),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, None),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": True},
            },
            "stream_options",
        ),
    ],
)
def test_what_nuri_does_not_serve_is_a_400_naming_it(body: dict, param: str | None) -> None:  # type: ignore[type-arg]
    with pytest.raises(gateway.InvalidRequest) as err:
        gateway.parse_body(json.dumps(body).encode(), "chat")
    if param is not None:
        assert err.value.details["param"] == param


def test_bad_json_and_adapters() -> None:
    with pytest.raises(gateway.InvalidRequest):
        gateway.parse_body(b"{not json", "chat")
    p = gateway.parse_body(b'{"model": "ep:fr", "prompt": "x", "n": 1, "user": "u"}', "completion")
    assert (p.endpoint, p.adapter, p.prompt) == ("ep", "fr", "x")


def test_openai_error_body() -> None:
    resp = gateway.error_response(401, "unauthenticated", "no", {})
    body = json.loads(bytes(resp.body))
    assert resp.status_code == 401
    assert body == {
        "error": {"message": "no", "type": "invalid_request_error", "param": None,
                  "code": "invalid_api_key"}
    }  # fmt: skip
    quota = json.loads(bytes(gateway.error_response(429, "insufficient_quota", "q", {}).body))
    assert quota["error"]["type"] == "insufficient_quota"
    assert gateway.error_response(422, "validation_error", "v", {}).status_code == 400


# --- the prompt-token upper bound ----------------------------------------------------------

_text = st.text(max_size=60)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": _text}
)
_messages = st.lists(_message, min_size=1, max_size=6)


@pytest.fixture(scope="module")
def chatml(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A byte-level BPE tokenizer with a ChatML template and no merges: the most tokens per
    byte a byte-level BPE makes (as in tests/unit/workers/test_tokenizer.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory: Path = tmp_path_factory.mktemp("chatml")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    inner = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(str(directory))
    return load_tokenizer("model-dir", directory)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=_messages, system=st.none() | _text)
def test_the_bound_covers_the_byte_tokenizer(
    messages: list[dict[str, str]], system: str | None
) -> None:
    from workers.tokenizer import with_system

    tok = ByteTokenizer()
    actual = len(tok.generation_prompt(with_system(messages, system)))
    assert metering.prompt_token_bound(messages, None, system) >= actual


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=_messages, system=st.none() | _text)
def test_the_bound_covers_a_chat_template_tokenizer(
    chatml: object, messages: list[dict[str, str]], system: str | None
) -> None:
    from workers.tokenizer import with_system

    actual = len(chatml.generation_prompt(with_system(messages, system)))  # type: ignore[attr-defined]
    assert metering.prompt_token_bound(messages, None, system) >= actual


@given(prompt=st.text(max_size=200))
def test_the_bound_covers_a_completion_prompt(prompt: str) -> None:
    tok = ByteTokenizer()
    assert metering.prompt_token_bound(None, prompt) >= len([tok.bos_id, *tok.encode(prompt)])


def test_the_bound_is_tight_enough_to_be_useful() -> None:
    msgs = [{"role": "user", "content": "x" * 1000}]
    assert metering.prompt_token_bound(msgs) <= 1000 + metering.MESSAGE_OVERHEAD + 8
