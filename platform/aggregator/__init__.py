"""The aggregator: Cohort's Flower ServerApp.

It drives the rounds of a study and sums encrypted updates. It holds no key of any kind, so it can
add ciphertexts but never read an update or the model. Django-free: it depends on `crypto` and flwr.
"""
