"""gRPC plumbing shared by every service: the error interceptor, health, reflection."""
