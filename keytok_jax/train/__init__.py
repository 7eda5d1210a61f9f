"""Contrastive fine-tuning of a decoder backbone into an embedder (``python -m keytok_jax.finetune``).

Read in this order:

``data``: training examples from pair/triplet JSONL, NLI files and BEIR train qrels.
``batches``: examples → tokenized roles → fixed-shape micro-batches in a replayable order.
``objectives``: trainable parameter sets (full, bias-only, LoRA), the InfoNCE loss, the optimizer.
``checkpoint``: the run's fingerprint (a rerun with other settings is refused), orbax checkpoints.
``loop``: ``train``, the run as named steps (prepare, trainer, resume, steps, finish).
``export``: the trained model as a Hugging Face folder plus its ``keytok.yaml`` embed preset.
"""
