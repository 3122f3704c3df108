"""LamRA cuts texts to 480 tokens only when it trains; its evaluation embeds query texts whole. On a tiny
random Qwen2.5-VL (real tokenizer), a query that differs only after its 480th token must get its own
vector."""

from __future__ import annotations

import numpy as np

from vretrver.retrieval.base import make_embedder
from vretrver.samples import Query, Sample


def long_queries() -> list[Sample]:
    words = " ".join(f"word{n}" for n in range(400))  # well over 480 tokens
    return [
        Sample(id=end, query=Query(text=f"{words} and finally a {end}", instruction="Find the picture."))
        for end in ("cat", "boat")
    ]


def test_evaluation_embeds_long_queries_whole(tiny_qwen25vl):
    emb = make_embedder(f"lamra:{tiny_qwen25vl}", device="cpu")
    a, b = emb.embed_queries(long_queries())
    tok = emb._processor.tokenizer
    assert len(tok(long_queries()[0].query.text, add_special_tokens=False)["input_ids"]) > 600
    assert not np.allclose(a, b, atol=1e-6)  # the last words count
    assert "finally a cat." in emb.prompt_prefix(long_queries()[0].query.text, 0)

    # The training-time cut, where asked for, drops them: both queries then embed alike.
    cut = make_embedder(f"lamra:{tiny_qwen25vl}", device="cpu", max_text_tokens=480)
    assert cut.name != emb.name  # another setting, another embedding cache
    a, b = cut.embed_queries(long_queries())
    np.testing.assert_allclose(a, b, atol=1e-6)
