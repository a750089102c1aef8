"""Retrieval models: the GRank generator with auxiliary candidate tokens, its cross-attention ranker, SASRec and the
two-tower baseline, over one shared item encoder."""
