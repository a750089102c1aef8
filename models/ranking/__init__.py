"""Multi-task ranking models: TorchRec feature encoder, TokenMixer-Large / RankMixer backbones, CTR baselines, heads."""
