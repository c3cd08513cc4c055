"""Fault injection, fuzzing and chaos: the webhook under hostile input, dispatch under random
failures and interleavings, proxy outages and duplicate triggers."""
