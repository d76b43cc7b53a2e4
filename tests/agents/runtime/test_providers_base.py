"""Reading a reply that cannot be answered: what it is charged, and whether breakers count it.

Plain functions on bytes (the HTTP round trips are in test_providers_http.py, against fakellm);
these are the bodies fakellm does not send: a lone surrogate, a cut body whose usage survived,
a whole body of the wrong shape.
"""

from __future__ import annotations

import pytest

from agents.runtime.errors import MalformedReply, ProviderError, policy_for
from agents.runtime.providers import anthropic, openai
from agents.runtime.providers.base import decode_body, estimate_messages
from agents.runtime.types import ChatRequest, Message

REQUEST = ChatRequest(model="m", messages=(Message("user", "hello there"),), max_tokens=64)
OPENAI_USAGE = (
    b'"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,'
    b'"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}'
)


def _openai(raw: bytes) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        decode_body(raw, REQUEST, openai.parse_response, openai.usage_of)
    return caught.value


def test_a_lone_surrogate_in_the_text_is_a_malformed_reply_charged_its_usage() -> None:
    raw = (
        b'{"choices":[{"message":{"role":"assistant","content":"a\\ud800b"},'
        b'"finish_reason":"stop"}],' + OPENAI_USAGE + b"}"
    )
    failure = _openai(raw)
    assert type(failure) is MalformedReply
    assert (failure.input_tokens, failure.output_tokens) == (9, 12)


def test_a_cut_body_whose_nested_usage_survived_is_charged_that_usage() -> None:
    raw = b'{"id":"x",' + OPENAI_USAGE + b',"choices":[{"message":{"content":"a'
    failure = _openai(raw)
    assert type(failure) is MalformedReply
    assert (failure.input_tokens, failure.output_tokens) == (9, 12)


def test_a_body_cut_inside_its_usage_is_charged_an_estimate_and_counts_for_breakers() -> None:
    failure = _openai(b'{"choices":[],"usage":{"prompt_tokens":9,"compl')
    assert type(failure) is ProviderError
    assert failure.input_tokens == estimate_messages(REQUEST.messages)
    assert failure.output_tokens > 0
    assert policy_for(failure).counts_for_breaker


def test_a_whole_body_of_the_wrong_shape_is_charged_its_usage() -> None:
    failure = _openai(b'{"choices":[],' + OPENAI_USAGE + b"}")
    assert type(failure) is MalformedReply
    assert (failure.input_tokens, failure.output_tokens) == (9, 12)
    failure = _openai(b'{"choices":[{"message":{"content":5}}],' + OPENAI_USAGE + b"}")
    assert type(failure) is MalformedReply


def test_usage_that_is_not_a_count_is_no_usage() -> None:
    failure = _openai(b'{"choices":[],"usage":{"prompt_tokens":"9","completion_tokens":true}}')
    assert type(failure) is ProviderError
    assert failure.input_tokens == estimate_messages(REQUEST.messages)


def test_an_anthropic_body_with_bad_bytes_is_charged_its_usage() -> None:
    raw = (
        b'{"content":[{"type":"text","text":"caf\xc3"}],"stop_reason":"end_turn",'
        b'"usage":{"input_tokens":7,"output_tokens":3}}'
    )
    with pytest.raises(MalformedReply) as caught:
        decode_body(raw, REQUEST, anthropic.parse_response, anthropic.usage_of)
    assert (caught.value.input_tokens, caught.value.output_tokens) == (7, 3)


def test_a_malformed_reply_is_retried_and_falls_back_but_no_breaker_counts_it() -> None:
    policy = policy_for(MalformedReply("malformed"))
    assert (policy.retry, policy.fallback, policy.counts_for_breaker) == (True, True, False)
    assert policy_for(ProviderError("cut")).counts_for_breaker
