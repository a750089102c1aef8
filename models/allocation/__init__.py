"""Live-stream allocation policies: SL-MGAC (supervised-learning-enhanced multi-group actor-critic) with its
distilled serving student, and the offline baselines (BC, double DQN, discrete CQL, plain actor-critic, threshold)."""
