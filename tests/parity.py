"""Shared harness: build a tiny random transformers model, save it, load it with keytok_jax and
compare, each text run alone and unpadded in PyTorch, against padded keytok_jax batches."""
from __future__ import annotations

import numpy as np

torch = __import__("pytest").importorskip("torch")
import transformers  # noqa: E402

import keytok_jax  # noqa: E402

TOL = 1e-4
LENGTHS = (5, 11, 16)


def make_hf_model(config, seed: int = 0, cls=transformers.AutoModelForCausalLM):
    """Seeded random model in fp32 eager attention, with every 1-D parameter (norms, biases)
    perturbed so a missing or misplaced norm/bias shows in the outputs."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = cls.from_config(config, attn_implementation="eager").float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def save(model, folder, safe: bool = True):
    """save_pretrained (safetensors); with ``safe=False`` the weights go to pytorch_model.bin
    instead (transformers 5 no longer writes .bin itself)."""
    model.save_pretrained(folder)
    if not safe:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def random_texts(vocab: int, lengths=LENGTHS, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


def pad(texts, side: str):
    width = max(len(t) for t in texts)
    ids = np.zeros((len(texts), width), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(texts):
        sl = slice(0, len(t)) if side == "right" else slice(width - len(t), width)
        ids[i, sl], mask[i, sl] = t, 1
    return ids, mask


def reference(model, text, bidirectional: bool = False):
    """(last hidden state [T, D], logits [T, V], all hidden states) of one unpadded text.

    ``bidirectional``: a causal model gets an all-zero additive mask (nothing masked); a model that
    is bidirectional by its own config (Gemma3 ``use_bidirectional_attention``, or ``is_causal=False``,
    which transformers 5's mask builders honour) builds its own masks."""
    ids = torch.tensor([text])
    kwargs = {}
    own_masks = (getattr(model.config, "use_bidirectional_attention", False) in (True, "all")
                 or getattr(model.config, "is_causal", True) is False)
    if bidirectional and not own_masks:
        kwargs["attention_mask"] = torch.zeros(1, 1, len(text), len(text))  # additive: nothing masked
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, **kwargs)
    return (out.hidden_states[-1][0].numpy(), out.logits[0].numpy(),
            [h[0].numpy() for h in out.hidden_states])


def check_parity(hf_model, folder, *, bidirectional: bool = False, sides=("right", "left"),
                 all_layers: bool = True, lengths=LENGTHS, reference_model=None) -> dict:
    """Asserts max abs diff ≤ 1e-4 for hidden states, logits and (optionally) every layer;
    returns the max diffs per padding side. ``reference_model`` (default ``hf_model``) computes the
    expected outputs, e.g. the same weights under a config that changes the attention."""
    model = keytok_jax.load_model(str(folder), cache=False)
    texts = random_texts(hf_model.config.vocab_size, lengths)
    ref_model = hf_model if reference_model is None else reference_model
    refs = [reference(ref_model, t, bidirectional) for t in texts]
    attention = "bidirectional" if bidirectional else "causal"
    report = {}
    for side in sides:
        ids, mask = pad(texts, side)
        final, layers = model.hidden_states(ids, mask, attention=attention, all_layers=True)
        final, layers = np.asarray(final), np.asarray(layers)
        logits = np.asarray(model.logits(final))
        worst = {"hidden": 0.0, "logits": 0.0, "layers": 0.0}
        for i, (t, (h_ref, l_ref, all_ref)) in enumerate(zip(texts, refs)):
            real = mask[i].astype(bool)
            worst["hidden"] = max(worst["hidden"], float(np.abs(final[i][real] - h_ref).max()))
            worst["logits"] = max(worst["logits"], float(np.abs(logits[i][real] - l_ref).max()))
            if all_layers:
                # transformers: (embeddings, block 1 .. block L-1 outputs, final normed)
                for k in range(len(all_ref) - 1):
                    worst["layers"] = max(worst["layers"], float(np.abs(layers[k][i][real] - all_ref[k]).max()))
        report[side] = worst
        for what, diff in worst.items():
            assert diff <= TOL, f"{side} padding: max abs diff of {what} = {diff:.3g} > {TOL}"
    return report
