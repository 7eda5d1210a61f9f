"""Contrastive fine-tuning of a decoder backbone into an embedder (``python -m keytok_jax.finetune``).

``data``: training examples from pair/triplet JSONL, NLI files and BEIR train qrels.
``objectives``: trainable parameter sets (full, bias-only, LoRA) and the InfoNCE loss.
"""
