"""Exact and learned changes to a fused graph's fp32 weights before int8: cross-layer
equalization (:mod:`.equalize`) and AdaRound weight rounding (:mod:`.adaround`)."""
