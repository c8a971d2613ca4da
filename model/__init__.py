"""Caption model core: text cleaning, vocabulary, image loading, encoder, LSTM decoder network,
caption search, the model artifact and its config, and the readers (bytes, tables, Flickr8k)
that both ``training`` and ``beam_pipeline`` use.

The light parts (``model.text``, ``model.vocabulary``, ``model.bleu``, ``model.caption_search``,
``model.artifact_config``, ``model.artifact``, ``model.storage``, ``model.tables``,
``model.flickr8k``, ``model.image_loading``) import without TensorFlow; ``model.encoder`` (to build)
and ``model.lstm_decoder`` need it.
"""
import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) hides real messages.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
