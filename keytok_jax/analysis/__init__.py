"""Analysis of embeddings and their aligned tokens: principal components, the first-component
shift, the paper's alignment metrics, STS, and the texts and plots they use (rank 7: reads the
store and embeds through the pipeline; nothing below imports it)."""
