"""Semi-synthetic mixed-feed allocation environment (insert a live room or show a short video) with known truth.

See :mod:`recsys.feed.env` for the generative story, the common random numbers and the feature columns, and
:mod:`recsys.feed.policies` for reference policies.
"""

from recsys.feed.env import (
    BASE_FEATURES,
    TRUTH_FILES,
    Estimator,
    FeedEnv,
    FeedEnvConfig,
    LoggedData,
    MissingTruthError,
    Policy,
    RolloutResult,
    Scorer,
    feature_index,
    feature_names,
)
from recsys.feed.policies import always, clipped, constant, epsilon_greedy, never, threshold

__all__ = [
    "BASE_FEATURES",
    "TRUTH_FILES",
    "Estimator",
    "FeedEnv",
    "FeedEnvConfig",
    "LoggedData",
    "MissingTruthError",
    "Policy",
    "RolloutResult",
    "Scorer",
    "always",
    "clipped",
    "constant",
    "epsilon_greedy",
    "feature_index",
    "feature_names",
    "never",
    "threshold",
]
