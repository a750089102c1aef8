"""Neural temporal point processes for the streaming user events (brief ``tpp.md``): AttNHP with the PromptTPP
continuous-time retrieval prompt pool (corrected per §6), THP (EasyTPP variant) and a homogeneous Poisson baseline,
with the Monte Carlo / trapezoid log-likelihood, Ogata thinning with a valid bound and a violation counter, and
full-state checkpoints. Pure torch, no I/O (except :mod:`models.tpp.state`)."""

from models.tpp.attnhp import AttNHP, PromptContext, PromptPool
from models.tpp.base import (
    Encoded,
    LogLikelihood,
    NeuralTPP,
    PromptConfig,
    ScaledSoftplus,
    TPPConfig,
    time_encoding,
)
from models.tpp.batch import TPPBatch
from models.tpp.poisson import PoissonTPP
from models.tpp.state import LoadedState, load_state, save_state
from models.tpp.thinning import NextEventSample, sample_next
from models.tpp.thp import THP

__all__ = [
    "AttNHP",
    "Encoded",
    "LoadedState",
    "LogLikelihood",
    "NeuralTPP",
    "NextEventSample",
    "PoissonTPP",
    "PromptConfig",
    "PromptContext",
    "PromptPool",
    "ScaledSoftplus",
    "THP",
    "TPPBatch",
    "TPPConfig",
    "load_state",
    "sample_next",
    "save_state",
    "time_encoding",
]
