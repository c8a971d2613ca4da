"""Offline training: datasets, feature cache, embeddings, fitting, BLEU evaluation, export.

(TensorFlow's log level is set once, by ``model/__init__``, which every training module imports.)"""
