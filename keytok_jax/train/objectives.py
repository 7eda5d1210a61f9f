"""What is trained and towards what: trainable parameter sets and the contrastive loss.

Trainable sets (``Adapter.mode``):

- ``full``: every parameter.
- ``bias``: only bias vectors (BitFit, SGPT's recipe); refused for architectures without biases
  (Llama-family checkpoints such as SmolLM2 have none).
- ``lora``: low-rank updates ``W + (alpha / rank) * A @ B`` on the kernels of the stacked blocks
  whose path names one of ``targets`` (``attn``, ``mlp``, or single projections such as ``q``,
  ``v``, ``gate``). ``A [layers, in, rank]`` starts random, ``B [layers, rank, out]`` at zero, so
  training starts from the backbone exactly. During training the adapters ride beside the frozen
  kernels (``lora_a``, ``lora_b``: :class:`~keytok_jax.models.layers.Linear` adds ``x A B``), so
  no gradient of a full kernel is ever formed (measured on SmolLM2, 96 x 32 tokens: 25 s per
  gradient instead of 50 s with merged kernels); :func:`merge_lora` folds them in for export.

The frozen parameters are passed to the jitted step as arguments, never closed over, so XLA does
not embed 500 MB of constants into the program.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from ..errors import SettingsError
from ..pooling import l2_normalize, pool
from ..settings.train import TRAIN_MODES


@dataclass(frozen=True)
class Adapter:
    mode: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("attn", "mlp")

    def __post_init__(self):
        if self.mode not in TRAIN_MODES:
            raise SettingsError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.mode == "lora" and (self.rank < 1 or not self.targets):
            raise SettingsError("LoRA needs rank >= 1 and at least one target")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _flat(tree) -> dict[str, jax.Array]:
    return {"/".join(k): v for k, v in flatten_dict(tree).items()}


def _nest(flat: dict) -> dict:
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def lora_paths(params, targets) -> list[str]:
    """Kernels of the stacked blocks ([layers, in, out]) whose path names a target."""
    out = [p for p, v in _flat(params).items()
           if p.startswith("layers/") and p.endswith("/kernel") and v.ndim == 3
           and set(targets) & set(p.split("/")[1:-1])]
    if not out:
        raise SettingsError(f"no block kernel matches LoRA targets {list(targets)}")
    return sorted(out)


def init_trainable(params, adapter: Adapter, rng) -> dict:
    """The trainable pytree of ``adapter`` for the backbone ``params``."""
    flat = _flat(params)
    if adapter.mode == "full":
        return params
    if adapter.mode == "bias":
        biases = {p: v for p, v in flat.items() if p.endswith("/bias")}
        if not biases:
            raise SettingsError("this architecture has no bias parameters: bias-only (BitFit) training "
                                "is impossible; use --mode lora or --mode full")
        return _nest(biases)
    out = {}
    for i, p in enumerate(lora_paths(params, adapter.targets)):
        layers, d_in, d_out = flat[p].shape
        # Kaiming-style A, zero B (Hu et al. 2021): the update starts at exactly zero.
        a = jax.random.normal(jax.random.fold_in(rng, i), (layers, d_in, adapter.rank), jnp.float32)
        out[p] = {"a": a / jnp.sqrt(d_in), "b": jnp.zeros((layers, adapter.rank, d_out), jnp.float32)}
    return _nest({f"{p}/{k}": v for p, ab in out.items() for k, v in ab.items()})


def frozen_part(params, adapter: Adapter):
    """What the step receives besides the trainable tree (nothing for full fine-tuning)."""
    return {} if adapter.mode == "full" else params


def combine(frozen, trainable, adapter: Adapter):
    """Backbone parameters with the trainable part applied (what the model runs with)."""
    if adapter.mode == "full":
        return trainable
    flat = _flat(frozen)
    if adapter.mode == "bias":
        flat.update(_flat(trainable))
        return _nest(flat)
    lora = _flat(trainable)
    for p in {k.rsplit("/", 1)[0] for k in lora}:
        module = p.rsplit("/", 1)[0]    # ".../q/kernel" -> ".../q"
        flat[f"{module}/lora_a"] = lora[f"{p}/a"]
        flat[f"{module}/lora_b"] = adapter.scale * lora[f"{p}/b"]
    return _nest(flat)


def merge_lora(params):
    """Fold every ``lora_a``/``lora_b`` pair into its kernel (``W + A B``, per layer) and drop them:
    plain parameters that any loader and transformers understand."""
    flat = _flat(params)
    for key in [k for k in flat if k.endswith("/lora_a")]:
        module = key.rsplit("/", 1)[0]
        a, b = flat.pop(key), flat.pop(f"{module}/lora_b")
        w = flat[f"{module}/kernel"]
        flat[f"{module}/kernel"] = (w.astype(jnp.float32) + jnp.einsum("...ir,...ro->...io", a, b)).astype(w.dtype)
    return _nest(flat)


def count(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def info_nce(anchor, positive, negative=None, temperature: float = 0.05):
    """InfoNCE with in-batch negatives: anchor i must pick positive i among all positives of the
    batch (and all hard negatives, when given), by cosine similarity / temperature.
    ``anchor, positive, negative [B, D]`` → (mean loss, top-1 accuracy)."""
    a = l2_normalize(anchor)
    candidates = l2_normalize(positive if negative is None else jnp.concatenate([positive, negative]))
    logits = a @ candidates.T / temperature                         # [B, B] or [B, 2B]
    labels = jnp.arange(a.shape[0])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def make_train_step(module, adapter: Adapter, optimizer, pooling: str, roles: int, temperature: float):
    """``step(trainable, opt_state, frozen, ids, mask, pool_mask)`` → (trainable, opt_state,
    metrics). ``ids [roles * B, T]`` hold the anchors, then the positives, then (roles = 3) the
    hard negatives of one micro-batch."""

    def loss_fn(trainable, frozen, ids, mask, pool_mask):
        params = combine(frozen, trainable, adapter)
        hidden = module.apply({"params": params}, ids, mask)
        emb = pool(hidden, pool_mask, pooling).reshape(roles, -1, hidden.shape[-1])
        return info_nce(emb[0], emb[1], emb[2] if roles == 3 else None, temperature)

    def step(trainable, opt_state, frozen, ids, mask, pool_mask):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen, ids, mask, pool_mask)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, {"loss": loss, "accuracy": acc, "grad_norm": optax.global_norm(grads)}

    return jax.jit(step, donate_argnums=(0, 1))


def make_optimizer(lr: float, total_steps: int, warmup_steps: int, weight_decay: float,
                   max_grad_norm: float, accumulation: int):
    """AdamW with linear warm-up then linear decay to 0, global-norm clipping, and gradient
    accumulation over ``accumulation`` micro-batches (optax.MultiSteps: in-batch negatives come
    from each micro-batch)."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
         optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))], [warmup_steps])
    inner = optax.chain(optax.clip_by_global_norm(max_grad_norm),
                        optax.adamw(schedule, weight_decay=weight_decay))
    return optax.MultiSteps(inner, every_k_schedule=accumulation), schedule
