"""Entropy-coding layer of amdcompress (no torch here).

* :mod:`.message`: the ANS stack, its byte form, initial bits and underflow.
* :mod:`.distributions`: integer frequency tables built deterministically
  from float parameters (categorical, discretized logistic mixtures, uniform).
* :mod:`.core`: codecs as (push, pop) pairs and their combinators
  (serial, chained, bits-back, bits-back chains, growing generations and
  their initial-bits ledger).
"""
from .core import (Categorical, Codec, GrowingPlan, Uniform, Windowed, bits_back, bits_back_chain, bits_back_joint,
                   chained, generations, information_bits, observed, serial, swapped)
from .distributions import (
    PRECISION,
    TOTAL,
    categorical_from_logits,
    categorical_from_probs,
    det_exp,
    det_sigmoid,
    logistic_mixture_counts,
    quantize_weights,
    uniform_counts,
    windowed_logistic_mixture_counts,
)
from .message import CorruptStreamError, Message, MessageUnderflowError, seed_words

__all__ = [
    "Categorical", "Codec", "GrowingPlan", "Uniform", "Windowed", "bits_back", "bits_back_chain", "bits_back_joint",
    "chained", "generations", "information_bits", "observed", "serial", "swapped",
    "PRECISION", "TOTAL", "categorical_from_logits", "categorical_from_probs", "det_exp", "det_sigmoid",
    "logistic_mixture_counts", "quantize_weights", "uniform_counts", "windowed_logistic_mixture_counts",
    "CorruptStreamError", "Message", "MessageUnderflowError", "seed_words",
]
