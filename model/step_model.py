"""What the caption search needs of a network (``StepModel``), and how its state is carried.

The state is a tuple of arrays whose first axis is the row (a live caption), so the search
drops finished captions and follows beams by row selection (``select_rows``). An entry may instead
be ``PerImage``: arrays with one entry per image, shared by that image's rows (the model keeps a
per-row image index in the state to find them), which row selection does not copy.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

State = tuple[np.ndarray, ...]


class StepModel(Protocol):
    """What the search needs of a network: advance one word at a time, carrying the recurrent
    state (implemented by ``model.lstm_decoder.KerasStepModel`` / ``OpenVinoStepModel``, the
    attention decoders' step models, and the filters of ``model.step_filters``)."""

    def initial_state(self, features: np.ndarray) -> State: ...

    def step(self, word_ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Return log-probabilities ``(rows, vocab)`` of the next word and the new state."""
        ...


class PerImage(tuple):
    """A state entry shared by the rows of each image (e.g. an attention decoder's projected map):
    a tuple of arrays whose first axis is the image, left as it is by row selection."""


def select_rows(state: State, rows: np.ndarray) -> State:
    """The state of ``rows`` (in that order); ``PerImage`` entries are kept whole."""
    return tuple(s if isinstance(s, PerImage) else s[rows] for s in state)
