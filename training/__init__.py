"""Offline training: datasets, feature cache, embeddings, fitting, BLEU evaluation, export."""
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
