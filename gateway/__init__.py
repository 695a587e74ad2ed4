"""The gateway: the public InferenceService. It validates and tokenizes requests, then relays them to
the router (`python -m gateway`; docs/serving.md)."""
