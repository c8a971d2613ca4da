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

# OpenVINO's model converter (and NNCF) send usage telemetry to Google Analytics from a child
# process unless a consent file in the user's home says no; a batch job must not send anything
# anywhere on its own. Both fall back to their built-in no-op stubs when the telemetry package
# cannot be imported, which is what marking it absent here does (for this process only).
import sys as _sys

_sys.modules.setdefault("openvino_telemetry", None)
