"""Caption model core: text cleaning, vocabulary, encoder, decoder, decoding and the model artifact.

Submodules are imported lazily by callers so that the pure-Python parts (``model.text``,
``model.vocabulary``, ``model.bleu``, ``model.decoding``) work without importing TensorFlow.
"""
