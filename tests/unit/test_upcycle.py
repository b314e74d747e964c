"""Upcycling a pretrained BERT into the post-norm MoE: the same encoder to float precision,
the vocabulary trimmed without changing any training text's ids, export parity of the pieces.
(Fine-tuning it end to end: tests/integration/test_training.py.)"""

import dataclasses
import json

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from moe.checkpoint import load_checkpoint, save_checkpoint
from moe.config import MoEConfig, preset
from moe.errors import MoEError
from moe.routing import pad_real_tokens
from moe.tokenizer import encode, load_fast_tokenizer
from moe.upcycle import read_pretrained, start_from_pretrained, trim_vocabulary

from .bls_harness import execute, exported_server, start_bls

SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "oil",
    "price",
    "market",
    "stock",
    "team",
    "game",
    "space",
    "new",
    "play",
    "win",
    "rise",
    "fall",
    "zebra",
    "quantum",
    "##s",
    "##ing",
    "##ed",
    "##er",
    "##ly",
    "##ket",
]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,'-$")
VOCAB = SPECIALS + WORDS + CHARS + ["##" + c for c in CHARS]

TRAIN_TEXTS = [
    "The oil price rises; stocks fall.",
    "New team wins the game, playing in space",
    "Market: stocks rise as oil falls",
    "Played, winning, winner $5",
]
# Words that the training texts never use: "zebra" and "quantum" are trimmed away.
UNSEEN_TEXT = "Zebra quantum markets"

# The routing settings of a small MoE; the architecture comes from the pretrained folder.
BASE = dataclasses.replace(preset("tiny"), max_len=24, dropout=0.0)


def make_tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


def save_tiny_bert(folder):
    """A random 2-layer BERT saved the way Hugging Face saves one, with its tokenizer.json."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    model = BertModel(config).eval()
    # Random LayerNorm parameters and biases too, so a misplaced norm or bias shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    make_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def bert_hidden_states(folder, texts):
    """Hugging Face's own BertModel and tokenizer: the reference."""
    from transformers import BertModel

    hf = BertModel.from_pretrained(folder).eval()
    enc = load_fast_tokenizer(folder / "tokenizer.json")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state


def moe_hidden_states(model, tokenizer, texts):
    """Our encoder's output before pooling: the blocks, then the classifier's opening norm."""
    ids, mask = encode(load_fast_tokenizer(tokenizer), texts, model.cfg.max_len)
    with torch.no_grad():
        x, real = model.embed(ids, mask)
        for block in model.blocks:
            x, _, _ = block(x, mask, real)
        return pad_real_tokens(model.classifier.norm(x), real, *mask.shape), mask


def test_copy_upcycled_model_is_the_pretrained_encoder(bert_folder):
    model, tok = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "copy")
    model.eval()
    assert model.cfg.norm_position == "post" and model.cfg.d_ff == 64 and model.cfg.vocab_size < len(VOCAB)
    # With identical experts the top-k weights (which sum to 1) cannot matter: any router,
    # here a far from small one, gives the dense FFN.
    with torch.no_grad():
        for block in model.blocks:
            block.moe.router.proj.weight.normal_(0.0, 1.0)
    ours, mask = moe_hidden_states(model, tok, TRAIN_TEXTS)
    ref = bert_hidden_states(bert_folder, TRAIN_TEXTS)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours[mask], ref[mask], atol=1e-5, rtol=0)


def test_slice_upcycled_model_with_every_slice_chosen_is_the_pretrained_encoder(bert_folder):
    base = dataclasses.replace(BASE, top_k=BASE.n_experts)
    model, tok = start_from_pretrained(bert_folder, TRAIN_TEXTS, base, "slice")
    model.eval()
    assert model.cfg.d_ff == 64 // BASE.n_experts
    # A zero router weighs every slice 1/n_experts, which slices scaled by top_k = n_experts undo.
    with torch.no_grad():
        for block in model.blocks:
            block.moe.router.proj.weight.zero_()
    ours, mask = moe_hidden_states(model, tok, TRAIN_TEXTS)
    ref = bert_hidden_states(bert_folder, TRAIN_TEXTS)
    torch.testing.assert_close(ours[mask], ref[mask], atol=1e-5, rtol=0)


def test_slice_layer_starts_as_the_dense_ffn_on_the_chosen_hidden_units(bert_folder):
    model, _ = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "slice")
    moe, d_ff = model.blocks[1].moe, model.cfg.d_ff
    weights = read_pretrained(bert_folder).weights
    fc1 = torch.nn.Linear(32, 64)
    fc1.load_state_dict({k: weights[f"encoder.layer.1.intermediate.dense.{k}"] for k in ("weight", "bias")})
    w2, b2 = weights["encoder.layer.1.output.dense.weight"], weights["encoder.layer.1.output.dense.bias"]
    with torch.no_grad():
        moe.router.proj.weight.zero_()  # ties: equal top-k weights 1/k
        a = torch.randn(7, 32)
        update, expert_ids, _ = moe(a)
        chosen = torch.zeros(7, 64)
        for slot in range(BASE.top_k):
            for t, e in enumerate(expert_ids[:, slot].tolist()):
                chosen[t, e * d_ff : (e + 1) * d_ff] = 1.0
        expected = (torch.nn.functional.gelu(fc1(a)) * chosen) @ w2.T + b2
    torch.testing.assert_close(update, expected, atol=1e-5, rtol=0)


def test_upcycled_routers_start_small_and_blind_to_the_mean_token(bert_folder):
    model, tok = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "copy")
    ids, mask = encode(load_fast_tokenizer(tok), TRAIN_TEXTS, model.cfg.max_len)
    inputs = []
    hooks = [b.moe.router.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for b in model.blocks]
    with torch.no_grad():
        _, _, router_logits = model.eval().forward_routed(ids, mask)
    for hook in hooks:
        hook.remove()
    for block, h, logits in zip(model.blocks, inputs, router_logits):
        # The direction every token shares gives no logit: only what differs between tokens routes.
        assert (block.moe.router.proj.weight @ h.mean(0)).abs().max() < 1e-5
        weights = torch.softmax(logits.topk(BASE.top_k).values, -1)
        assert (weights - 1 / BASE.top_k).abs().max() < 0.25  # top-k weights start near 1/k


def test_trimmed_vocabulary_keeps_the_ids_of_training_texts(bert_folder):
    full = read_pretrained(bert_folder)
    trimmed = trim_vocabulary(full, TRAIN_TEXTS)
    old_vocab, new_vocab = full.tokenizer.get_vocab(), trimmed.tokenizer.get_vocab()
    assert set(new_vocab) < set(old_vocab)
    assert new_vocab["[PAD]"] == 0 and "[unused0]" not in new_vocab
    assert "zebra" not in new_vocab and "quantum" not in new_vocab and "##ly" not in new_vocab
    # New ids follow the old order, and each kept token keeps its embedding row.
    kept = sorted(new_vocab, key=new_vocab.get)
    assert [old_vocab[t] for t in kept] == sorted(old_vocab[t] for t in kept)
    old_table = full.weights["embeddings.word_embeddings.weight"]
    new_table = trimmed.weights["embeddings.word_embeddings.weight"]
    assert torch.equal(new_table, old_table[[old_vocab[t] for t in kept]])
    assert trimmed.config["vocab_size"] == len(new_vocab) == new_table.shape[0]
    # Every training text gives the same tokens, renumbered, [CLS] and [SEP] included.
    for text in TRAIN_TEXTS:
        before = full.tokenizer.encode(text).tokens
        after = trimmed.tokenizer.encode(text)
        assert after.tokens == before and after.ids == [new_vocab[t] for t in before]
        assert before[0] == "[CLS]" and before[-1] == "[SEP]"
    # Words whose subwords were trimmed still segment, into the characters kept for that.
    unseen = trimmed.tokenizer.encode(UNSEEN_TEXT).tokens
    assert "[UNK]" not in unseen and unseen[1:4] == ["z", "##e", "##b"]


def test_checkpoint_tokenizer_json_alone_gives_the_training_ids(bert_folder, tmp_path):
    """The Triton tokenizer model reads tokenizer.json with `tokenizers` only: truncation,
    padding and the [CLS] ... [SEP] template must live in the file."""
    model, tok = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "copy")
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    texts = TRAIN_TEXTS + [" ".join(TRAIN_TEXTS * 3)]  # the last one is truncated
    ids, mask = encode(load_fast_tokenizer(tmp_path / "tokenizer.json"), texts, model.cfg.max_len)
    served = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode_batch(texts)
    assert ids.tolist() == [e.ids for e in served]
    assert mask.tolist() == [[bool(m) for m in e.attention_mask] for e in served]
    sep, pad = tok.token_to_id("[SEP]"), model.cfg.pad_id
    assert ids.shape[1] == model.cfg.max_len and ids[-1, -1].item() == sep
    assert ids[0, int(mask[0].sum()) - 1].item() == sep and ids[0, -1].item() == pad == 0


def test_exported_post_norm_pieces_match_eager_and_serve_v1_through_the_bls(bert_folder, tmp_path):
    from export.repository import export_repository

    torch.manual_seed(0)
    model, tok = start_from_pretrained(bert_folder, TRAIN_TEXTS, BASE, "slice")
    with torch.no_grad():  # routers and experts that differ, so routing decides the result
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ck = tmp_path / "ck"
    save_checkpoint(ck, model, tok.to_str(), {"epochs": []})
    model, _ = load_checkpoint(ck)
    out = export_repository(ck, tmp_path / "build", progress=False, log=lambda *_: None)
    assert json.loads((out / "manifest.json").read_text())["config"]["norm_position"] == "post"

    # v1: the BLS's own code (model_repository/moe_bls) over the exported TorchScript pieces.
    ids, mask = encode(load_fast_tokenizer(ck / "tokenizer.json"), TRAIN_TEXTS, model.cfg.max_len)
    bls = start_bls(exported_server(out), model.cfg.n_layers, model.cfg.n_experts, expert_calls="ensemble", groups=2)
    try:
        (response,) = execute(bls, [(ids, mask)], expert_tokens=False)
    finally:
        bls.finalize()
    assert not response.has_error(), response.error().message()
    with torch.no_grad():
        torch.testing.assert_close(response.output_tensors[0].value, model(ids, mask), atol=1e-5, rtol=0)


def test_config_json_without_the_post_norm_keys_loads_as_pre_norm(tmp_path):
    """Checkpoints written before norm_position and layer_norm_eps existed keep their meaning."""
    old = {k: v for k, v in MoEConfig().to_dict().items() if k not in ("norm_position", "layer_norm_eps")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = MoEConfig.load(tmp_path / "config.json")
    assert cfg.norm_position == "pre" and cfg.layer_norm_eps == 1e-5
    with pytest.raises(ValueError, match="norm_position"):
        MoEConfig(norm_position="sandwich")


def test_upcycling_refuses_what_it_cannot_convert(bert_folder, tmp_path):
    with pytest.raises(MoEError, match="not a Hugging Face model folder"):
        start_from_pretrained(tmp_path, TRAIN_TEXTS, BASE, "copy")
    with pytest.raises(MoEError, match="equal slices"):
        start_from_pretrained(bert_folder, TRAIN_TEXTS, dataclasses.replace(BASE, n_experts=5, top_k=2), "slice")
