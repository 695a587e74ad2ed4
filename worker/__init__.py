"""The worker: one process per GPU, hosting one engine and feeding it from the model's Redis stream.

`python -m worker --engine NAME` (see worker/settings.py). The engine knows nothing of Redis or
protobuf: worker/translate.py converts at the edge, worker/loop.py drives the engine step by step.
"""
