"""sentence-transformers folders (modules.json: Transformer, Pooling, Dense, Normalize; prompts)
embed as ``SentenceTransformer(folder).encode`` does, through the API and the embed CLI.

Tiny random folders are built here with sentence-transformers itself (the reference), each with a
small tokenizer trained in the test: an EmbeddingGemma-like one (Gemma3 declaring bidirectional
attention, mean pooling, two Dense layers, Normalize, query/document prompts), pooling variants
(cls, last token, weighted mean, mean; prompts kept out of pooling; a default prompt name) and,
when the Qwen3 port is registered, a Qwen3-Embedding-like one (last token on the EOS its
tokenizer appends, left padding, Normalize, a query instruction).
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st_lib = pytest.importorskip("sentence_transformers")
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from keytok_jax.cli.embed import main as embed_main  # noqa: E402
from keytok_jax.errors import KeytokError, SettingsError  # noqa: E402
from keytok_jax.loading.st_folder import STFolderError  # noqa: E402
from keytok_jax.models import FAMILIES  # noqa: E402
from keytok_jax.pipeline import Embedder  # noqa: E402
from keytok_jax import store as store_lib  # noqa: E402
from keytok_jax.retrieval.searcher import embedder_for_store  # noqa: E402

TOL = 1e-4
TEXTS = ["the quick brown fox", "hello world, how are you today? dogs and foxes are animals", "fox",
         "what is a lazy dog? it jumps over the quick brown fox again and again and again and again",
         "animals"]
CORPUS = ["the quick brown fox jumps over the lazy dog", "task: search result | query: what is a fox",
          "title: none | text: dogs and foxes are animals", "hello world, how are you today?",
          "Instruct: find the fox\nQuery: where is it"] * 20
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}
ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}


def _tokenizer(kind: str):
    """A trained 160-token BPE: ``gemma`` (Metaspace, ``<bos> $A <eos>``) or ``qwen`` (byte-level,
    ``$A <|endoftext|>``, left padding)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] if kind == "gemma" else ["<|endoftext|>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "gemma":
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=specials)
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if kind == "gemma":
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                    pad_token="<pad>", unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>",
                                                       special_tokens=[("<|endoftext|>", 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>", unk_token="<unk>",
                                                padding_side="left")


def _gemma_config(tokenizer, bidirectional: bool):
    return transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_attention_heads=4, head_dim=16,
        num_key_value_heads=2, max_position_embeddings=64, query_pre_attn_scalar=24, num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=4,
        use_bidirectional_attention=bidirectional, rope_parameters={k: dict(v) for k, v in ROPE.items()},
        pad_token_id=0, bos_token_id=2, eos_token_id=1)


def _perturbed(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _st_folder(root, config, tokenizer, pooling, post, prompts, default_prompt_name=None, max_seq_length=40):
    """Save a backbone, then a SentenceTransformer over it, into ``root/st``."""
    stm = st_lib.sentence_transformer.modules
    base = root / "backbone"
    torch.manual_seed(0)
    _perturbed(transformers.AutoModel.from_config(config)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    modules = [st_lib.base.modules.Transformer(str(base), max_seq_length=max_seq_length), pooling, *post]
    model = st_lib.SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt_name,
                                       device="cpu")
    model.save(str(root / "st"))
    return root / "st", base


def _dense(n_in, n_out, bias, act):
    torch.manual_seed(n_in * 7 + n_out)
    return st_lib.base.modules.Dense(n_in, n_out, bias=bias, activation_function=act)


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    """EmbeddingGemma-like: bidirectional Gemma3, mean, Dense 32→64 (bias, identity), Dense 64→32
    (no bias, tanh), Normalize, query/document prompts (as EmbeddingGemma: 768→3072→768)."""
    tokenizer = _tokenizer("gemma")
    pooling = st_lib.sentence_transformer.modules.Pooling(32, pooling_mode="mean")
    post = [_dense(32, 64, True, torch.nn.Identity()), _dense(64, 32, False, torch.nn.Tanh()),
            st_lib.base.modules.Normalize()]
    return _st_folder(tmp_path_factory.mktemp("gemma-st"), _gemma_config(tokenizer, True), tokenizer,
                      pooling, post, GEMMA_PROMPTS)


def _reference(folder):
    return st_lib.SentenceTransformer(str(folder), device="cpu")


def _diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_embeddinggemma_like_api(gemma_folder):
    folder, _ = gemma_folder
    ref = _reference(folder)
    emb = Embedder.from_pretrained(str(folder))
    assert emb.settings.attention == "bidirectional" and emb.settings.pooling == "mean"
    assert emb.settings.max_length == 40 and emb.settings.add_eos
    for name in (None, "query", "document"):
        d = _diff(emb.encode(TEXTS, prompt_name=name), ref.encode(TEXTS, prompt_name=name))
        print("embeddinggemma-like", name, d)
        assert d <= TOL
    # the settings' prompt_name is the default of encode; prompt= takes a prompt text
    emb_q = Embedder.from_pretrained(str(folder), prompt_name="query")
    assert _diff(emb_q.encode(TEXTS), ref.encode(TEXTS, prompt_name="query")) <= TOL
    assert _diff(emb.encode(TEXTS, prompt="title: a | text: "), ref.encode(TEXTS, prompt="title: a | text: ")) <= TOL
    # the aligned tokens project the pooled hidden state (before the Dense layers) through the head
    out = emb.encode(TEXTS[:1], output_value=None)
    assert out.dense.shape == (1, 32) and (out.token_ids[0] >= 0).all()


def _store_dense(path):
    s = store_lib.open(path)
    return np.asarray(s.dense.read().result()), s.ids


def test_embeddinggemma_like_cli(gemma_folder, tmp_path):
    folder, _ = gemma_folder
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    ref = _reference(folder)
    for name in (None, "document"):
        out = tmp_path / f"store-{name}"
        args = ["--model", str(folder), "--input", str(corpus), "--output", str(out), "--dense", "--no-progress"]
        embed_main(args + (["--prompt-name", name] if name else []))
        dense, _ = _store_dense(out)
        d = _diff(dense, ref.encode(TEXTS, prompt_name=name))
        print("embeddinggemma-like CLI", name, d)
        assert d <= TOL


POOLING_CASES = {  # mode, include_prompt
    "cls-exclude-prompt": ("cls", False),
    "lasttoken": ("lasttoken", True),
    "weightedmean-exclude-prompt": ("weightedmean", False),
    "weightedmean": ("weightedmean", True),
    "mean-exclude-prompt": ("mean", False),
}


@pytest.mark.parametrize("case", list(POOLING_CASES))
def test_pooling_variants(case, tmp_path):
    """Causal Gemma3 (no bidirectional flag), each pooling mode, prompts kept out of pooling, one
    Dense with GELU, no Normalize, a default prompt name."""
    mode, include_prompt = POOLING_CASES[case]
    tokenizer = _tokenizer("gemma")
    pooling = st_lib.sentence_transformer.modules.Pooling(32, pooling_mode=mode, include_prompt=include_prompt)
    folder, _ = _st_folder(tmp_path, _gemma_config(tokenizer, False), tokenizer, pooling,
                           [_dense(32, 16, True, torch.nn.GELU())],
                           {"query": "query: what", "document": "title: none |"}, default_prompt_name="query")
    ref = _reference(folder)
    emb = Embedder.from_pretrained(str(folder))
    assert emb.settings.attention == "causal"
    for name in (None, "document"):
        d = _diff(emb.encode(TEXTS, prompt_name=name), ref.encode(TEXTS, prompt_name=name))
        print(case, name, d)
        assert d <= TOL


@pytest.mark.skipif("qwen3" not in FAMILIES, reason="the Qwen3 port is not registered")
def test_qwen3_embedding_like(tmp_path):
    """Qwen3-Embedding-like: Qwen3, last token (on the EOS the tokenizer appends), left padding,
    Normalize, a query instruction and an empty document prompt."""
    tokenizer = _tokenizer("qwen")
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_hidden_layers=2, max_position_embeddings=64,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=0, bos_token_id=None)
    pooling = st_lib.sentence_transformer.modules.Pooling(32, pooling_mode="lasttoken")
    folder, _ = _st_folder(tmp_path, config, tokenizer, pooling, [st_lib.base.modules.Normalize()],
                           {"query": "Instruct: find the fox\nQuery:", "document": ""})
    ref = _reference(folder)
    assert ref.tokenizer.padding_side == "left"
    emb = Embedder.from_pretrained(str(folder))
    assert emb.settings.pooling == "last" and emb.settings.add_eos
    for name in (None, "query", "document"):
        d = _diff(emb.encode(TEXTS, prompt_name=name), ref.encode(TEXTS, prompt_name=name))
        print("qwen3-embedding-like", name, d)
        assert d <= TOL
    # through the embed CLI with no extra flag: the store's dense vectors are sentence-transformers'
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    embed_main(["--model", str(folder), "--input", str(corpus), "--output", str(tmp_path / "store"), "--dense",
                "--no-progress"])
    d = _diff(_store_dense(tmp_path / "store")[0], ref.encode(TEXTS))
    print("qwen3-embedding-like CLI", d)
    assert d <= TOL


def test_declared_bidirectional_and_ignore(gemma_folder):
    folder, backbone = gemma_folder
    # a plain folder whose config declares bidirectional attention embeds bidirectionally
    assert Embedder.from_pretrained(str(backbone)).settings.attention == "bidirectional"
    plain = Embedder.from_pretrained(str(backbone), model_declares="ignore")
    assert plain.settings.attention == "causal" and plain.st_modules is None
    with pytest.raises(SettingsError, match="not a sentence-transformers folder"):
        Embedder.from_pretrained(str(backbone), prompt_name="query")
    with pytest.raises(STFolderError, match="'passage' not in"):
        Embedder.from_pretrained(str(folder), prompt_name="passage")
    assert issubclass(STFolderError, KeytokError)


def test_unsupported_modules_are_refused(gemma_folder, tmp_path):
    import shutil

    folder, _ = gemma_folder
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "1_Pooling" / "config.json").read_text())
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({**cfg, "pooling_mode": "max"}))
    with pytest.raises(STFolderError, match="pooling mode 'max' is not implemented"):
        Embedder.from_pretrained(str(copy))


def test_cls_pool_is_the_first_counted_position():
    from keytok_jax.pooling import pool

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 6, 4)).astype(np.float32)
    hidden[0, :2] = np.nan                                   # left padding garbage never leaks
    mask = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.int32)
    out = np.asarray(pool(hidden, mask, "cls"))
    np.testing.assert_array_equal(out[0], hidden[0, 3])
    np.testing.assert_array_equal(out[1], hidden[1, 0])
    np.testing.assert_array_equal(out[2], np.zeros(4))


def test_legacy_folder_format(gemma_folder, tmp_path):
    """The layout hub folders of EmbeddingGemma / Qwen3-Embedding use: ``sentence_transformers.models.*``
    module types, ``sentence_bert_config.json`` with ``max_seq_length``, ``pooling_mode_*_tokens``
    booleans."""
    import shutil

    folder, _ = gemma_folder
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    modules = json.loads((legacy / "modules.json").read_text())
    for m in modules:
        m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
    (legacy / "modules.json").write_text(json.dumps(modules))
    (legacy / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": False}))
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}))
    ref = _reference(legacy)
    assert ref.max_seq_length == 12
    emb = Embedder.from_pretrained(str(legacy))
    assert emb.settings.max_length == 12
    for name in (None, "query"):
        d = _diff(emb.encode(TEXTS, prompt_name=name), ref.encode(TEXTS, prompt_name=name))
        print("legacy layout", name, d)
        assert d <= TOL


def test_queries_of_a_store_take_the_folder_query_prompt(gemma_folder, tmp_path):
    """A store of a sentence-transformers folder embeds its queries as ``encode(prompt_name=
    "query")`` does (the folder's query prompt), and with the store's own prompt name they are its
    documents' vectors again."""
    folder, _ = gemma_folder
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "store"
    assert embed_main(["--model", str(folder), "--input", str(corpus), "--output", str(out), "--dense",
                       "--prompt-name", "document", "--no-progress"]) == 0
    ref = _reference(folder)
    queries = embedder_for_store(out)
    assert _diff(queries.encode(TEXTS), ref.encode(TEXTS, prompt_name="query")) <= TOL
    docs = embedder_for_store(out, prompt_name="document", model=queries.model)
    dense, _ = _store_dense(out)
    assert _diff(docs.encode(TEXTS), dense) <= TOL
