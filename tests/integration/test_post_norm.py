"""A post-norm (BERT-style) MoE upcycled from a pretrained encoder, served: v1 = v2 = eager.

Each LayerNorm of the post-norm block lands in exactly one Triton piece (the attention piece
opens with the previous layer's second norm, the classifier with the last one), so the BLS
still only gathers and adds; this checks it through a real tritonserver."""

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from export.repository import export_repository
from moe.checkpoint import save_checkpoint
from moe.data import load_split
from moe.tokenizer import encode, load_fast_tokenizer
from moe.upcycle import start_from_pretrained

from ..conftest import start_server
from ..unit.test_upcycle import BASE, save_tiny_bert
from .test_serving import classify


@pytest.fixture(scope="module")
def post_norm_checkpoint(tmp_path_factory, data_dir):
    bert = save_tiny_bert(tmp_path_factory.mktemp("bert"))
    texts = load_split(data_dir, "train").texts[:300]
    model, tokenizer = start_from_pretrained(bert, texts, BASE, "slice")
    # Routers far from their small start, so tokens really spread over the experts.
    with torch.no_grad():
        for block in model.blocks:
            block.moe.router.proj.weight.normal_(0.0, 1.0)
    out = tmp_path_factory.mktemp("ckpt") / "post-norm"
    save_checkpoint(out, model.eval(), tokenizer.to_str(), {})
    return out


def test_post_norm_v1_v2_and_eager_agree(post_norm_checkpoint, tmp_path, data_dir):
    repository = export_repository(post_norm_checkpoint, tmp_path / "build", progress=False, log=lambda *_: None)
    server = start_server(repository)
    try:
        from moe.checkpoint import load_checkpoint

        model, path = load_checkpoint(post_norm_checkpoint)
        assert model.cfg.norm_position == "post"
        tokenizer = load_fast_tokenizer(path / "tokenizer.json")
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        texts = load_split(data_dir, "test").texts[:256]
        for start in range(0, len(texts), 64):
            batch = texts[start : start + 64]
            ids, mask = encode(tokenizer, batch, model.cfg.max_len)
            with torch.no_grad():
                expected = torch.softmax(model(ids, mask), -1).numpy()
            v1 = classify(client, "moe_v1", batch, routing=True)
            v2 = classify(client, "moe_v2", batch)
            np.testing.assert_allclose(v1["PROBS"], expected, atol=1e-4, rtol=0)
            np.testing.assert_allclose(v2["PROBS"], expected, atol=1e-4, rtol=0)
            assert (v1["LABEL_ID"].reshape(-1) == expected.argmax(1)).all()
            assert (v2["LABEL_ID"].reshape(-1) == expected.argmax(1)).all()
            # Tokens really went to several experts in every layer.
            assert ((v1["EXPERT_TOKENS"].sum(axis=0) > 0).sum(axis=1) >= 4).all()
        client.close()
    finally:
        server.stop()
        server.cleanup()
