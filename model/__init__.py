"""Caption model core: text cleaning, vocabulary, encoder, decoder, decoding and the model artifact.

The pure-Python parts (``model.text``, ``model.vocabulary``, ``model.bleu``, ``model.caption_search``)
import without TensorFlow; ``model.encoder``, ``model.lstm_decoder`` and ``model.artifact`` need it.
"""
import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) hides real messages.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
