"""Perplexity equals an independent token-by-token NLL, in strided and whole-document modes."""

from __future__ import annotations

import math

import pytest
import torch
from eval_fixtures import TEXT, char_tokenizer
from tiny_models import tiny_llama

from hf_efficient_attn.eval.errors import EvalInputError
from hf_efficient_attn.eval.perplexity import (
    document_perplexity,
    plan_perplexity,
    run_perplexity,
    scoring_windows,
    strided_perplexity,
    text_perplexity,
)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def ids():
    return torch.tensor(char_tokenizer()(TEXT)["input_ids"][:80])


def token_nll(model, ids: torch.Tensor, begin: int, target: int) -> float:
    """-log p(ids[target] | ids[begin:target]) from a forward of exactly that context."""
    with torch.no_grad():
        logits = model(input_ids=ids[None, begin:target], use_cache=False).logits[0, -1].double()
    return -torch.log_softmax(logits, -1)[ids[target]].item()


def strided_context_start(target: int, max_length: int, stride: int) -> int:
    """Where the window that scores ``target`` begins: window k spans [k*stride, k*stride + max_length)
    and scores the tokens past the previous window's end, so tokens below max_length belong to window 0
    and token t >= max_length to window (t - max_length) // stride + 1."""
    if target < max_length:
        return 0
    return ((target - max_length) // stride + 1) * stride


@pytest.mark.parametrize(("max_length", "stride"), [(32, 16), (32, 5), (32, 31), (70, 1), (100, 50)])
def test_strided_equals_token_by_token(model, ids, max_length, stride):
    expected = sum(
        token_nll(model, ids, strided_context_start(t, max_length, stride), t) for t in range(1, ids.numel())
    )
    result = strided_perplexity(model, ids, max_length, stride, progress=False)
    assert result.tokens == ids.numel() - 1
    assert result.nll_sum == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected / (ids.numel() - 1)), rel=1e-5)


def test_document_mode_equals_token_by_token(model, ids):
    max_length = 32
    documents = [ids[:20], ids[20:21], ids[21:70], ids[70:]]  # one of 1 token, one longer than max_length
    expected, count = 0.0, 0
    for document in documents:
        kept = document[:max_length]
        expected += sum(token_nll(model, kept, 0, t) for t in range(1, kept.numel()))
        count += max(kept.numel() - 1, 0)
    result = document_perplexity(model, documents, max_length, progress=False)
    assert (result.tokens, result.forwards, result.truncated_documents) == (count, 3, 1)
    assert result.nll_sum == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_tokens", [0, 1, 2, 3, 17, 64, 65, 100])
@pytest.mark.parametrize(("max_length", "stride"), [(2, 1), (8, 3), (8, 7), (16, 8), (64, 32)])
def test_windows_score_every_token_after_the_first_exactly_once(num_tokens, max_length, stride):
    scored = []
    for window in scoring_windows(num_tokens, max_length, stride):
        assert window.end - window.begin <= max_length
        assert window.begin < window.first_target < window.end  # at least one token of context
        scored += range(window.first_target, window.end)
    assert scored == list(range(1, num_tokens))


def test_text_perplexity_tokenizes_and_reports(model):
    tokenizer = char_tokenizer()
    texts = ["First document.", "Second one, a little longer."]
    joined = torch.tensor(tokenizer("\n\n".join(texts))["input_ids"])
    strided = text_perplexity(model, tokenizer, texts, max_length=16, progress=False)
    assert strided.metric == "perplexity" and not strided.higher_is_better
    assert strided.details["stride"] == 8 and strided.details["tokens"] == joined.numel() - 1
    assert strided.value == strided_perplexity(model, joined, 16, 8, progress=False).perplexity
    whole = text_perplexity(model, tokenizer, texts, mode="document", max_length=64, progress=False)
    assert whole.details["tokens"] == sum(len(text) - 1 for text in texts)


def test_plans_list_the_input_lengths_to_warm_up():
    tokenizer = char_tokenizer()
    # 40 characters in one stream; windows of 16 every 8 tokens: [0,16) [8,24) [16,32) [24,40) -> all 16 long.
    assert plan_perplexity(tokenizer, ["a" * 40], max_length=16).forward_lengths() == [16]
    # 45 characters: the last window is [32, 45), 13 long.
    assert plan_perplexity(tokenizer, ["a" * 45], max_length=16).forward_lengths() == [13, 16]
    documents = plan_perplexity(tokenizer, ["a" * 5, "b", "c" * 30, "d" * 5], mode="document", max_length=16)
    assert documents.forward_lengths() == [5, 16]


def test_min_tokens_scores_only_the_long_documents(model):
    tokenizer = char_tokenizer()
    texts = ["a" * 5, "b" * 12, "c" * 30, "d" * 16]
    plan = plan_perplexity(tokenizer, texts, mode="document", max_length=16, min_tokens=16)
    assert [ids.numel() for ids in plan.sequences] == [30, 16] and plan.skipped_documents == 2
    score = run_perplexity(model, plan, progress=False)
    expected = document_perplexity(model, [torch.tensor(tokenizer(text)["input_ids"]) for text in texts[2:]], 16,
                                   progress=False)
    assert score.value == pytest.approx(expected.perplexity, rel=1e-6)
    assert score.details["tokens"] == 2 * 15  # each kept document cut to the context, scored from its 2nd token
    assert (score.details["documents"], score.details["skipped_documents"], score.details["truncated_documents"]) == (2, 2, 1)


def test_max_tokens_keeps_the_start_of_the_joined_text_and_plans_say_what_they_run():
    tokenizer = char_tokenizer()
    plan = plan_perplexity(tokenizer, ["a" * 30, "b" * 30], max_length=16, max_tokens=40)
    assert plan.sequences[0].tolist() == tokenizer("a" * 30 + "\n\n" + "b" * 8)["input_ids"]
    assert plan.describe() == "4 windows of 16 tokens, 8 apart, over 40 tokens"
    documents = plan_perplexity(tokenizer, ["a" * 5, "c" * 30], mode="document", max_length=16, min_tokens=16)
    assert documents.describe() == "1 document (1 more left out for being short), each up to 16 tokens in one forward"
    with pytest.raises(EvalInputError, match="max_samples"):
        plan_perplexity(tokenizer, ["a" * 30], mode="document", max_tokens=40)
    with pytest.raises(EvalInputError, match="at least 2"):
        plan_perplexity(tokenizer, ["a" * 30], max_tokens=1)


@pytest.mark.parametrize(("mode", "min_tokens", "match"), [("document", 31, "longest has 30"),
                                                           ("document", 1, "at least 2"),
                                                           ("strided", 16, "mode='document'")])
def test_min_tokens_refusals_say_what_to_change(mode, min_tokens, match):
    with pytest.raises(EvalInputError, match=match):
        plan_perplexity(char_tokenizer(), ["a" * 5, "c" * 30], mode=mode, max_length=16, min_tokens=min_tokens)


@pytest.mark.parametrize(("max_length", "stride", "match"), [(1, None, "max_length"), (8, 8, "stride"), (8, 0, "stride")])
def test_bad_lengths_name_the_argument(model, ids, max_length, stride, match):
    with pytest.raises(EvalInputError, match=match):
        strided_perplexity(model, ids, max_length, stride if stride is not None else 1, progress=False)


def test_too_short_text_is_an_error(model):
    with pytest.raises(EvalInputError, match="at least 2"):
        strided_perplexity(model, torch.tensor([5]), 8, 4, progress=False)
    with pytest.raises(EvalInputError, match="nothing to score"):
        document_perplexity(model, [torch.tensor([5])], 8, progress=False)
    with pytest.raises(EvalInputError, match="mode"):
        text_perplexity(model, char_tokenizer(), ["abc"], mode="sliding")
