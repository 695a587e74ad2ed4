"""The router: admits routed requests, queues them on their model's Redis stream, and relays the
workers' events back to the caller in order and without duplicates. `python -m router`."""
