"""inferline's builder service: turns checkpoints (HF folders, GGUF files, bundled models) into
engines in the engine store, registers them in Redis, and answers BuilderService over gRPC.

    settings.py  BuilderSettings (env INFERLINE_BUILDER_*, flags)
    source.py    which source a request names, whether it may be read, its content identity
    build.py     BuildSpec (validated request) and build_engine: fingerprint, convert, commit; no gRPC
    registry.py  the Redis registry (inferline:engine:{name}, inferline:engines)
    service.py   the BuilderService servicer (grpc.aio)
    app.py       serve(): store + registry + server, health, drain on stop
"""
