"""Real servers for tests: a redis-server on a free port (never the machine's own on 6379)."""
from inferline.local_redis import free_port, local_redis_server as redis_server

__all__ = ["free_port", "redis_server"]
