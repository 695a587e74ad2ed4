"""ListModels: the engines of the store, with live workers counted from Redis."""
from __future__ import annotations

import grpc
import redis

from inferline.v1 import generate_pb2, generate_pb2_grpc
from tests.gateway.conftest import MAX_SEQ_LEN, MODEL, running_gateway
from tests.servers import free_port


def test_list_models_describes_the_store_engines(stub):
    (model,) = stub.ListModels(generate_pb2.ListModelsRequest(), timeout=5).models
    assert (model.name, model.max_seq_len, model.quantization) == (MODEL, MAX_SEQ_LEN, "none")


def test_workers_are_the_live_ones(stub, redis_url):
    r = redis.Redis.from_url(redis_url)
    try:
        r.sadd(f"inferline:workers:{MODEL}", "w-live", "w-dead")  # w-dead's heartbeat hash has expired
        r.hset("inferline:worker:w-live", mapping={"model": MODEL, "free_slots": 4})
        (model,) = stub.ListModels(generate_pb2.ListModelsRequest(), timeout=5).models
        assert model.workers == 1
    finally:
        r.delete(f"inferline:workers:{MODEL}", "inferline:worker:w-live")
        r.close()


def test_list_models_works_while_redis_is_down(loop_thread, engine_store_dir, fake_router):
    with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=fake_router[1],
                         redis_url=f"redis://127.0.0.1:{free_port()}/0") as address:
        with grpc.insecure_channel(address) as ch:
            (model,) = generate_pb2_grpc.InferenceServiceStub(ch).ListModels(generate_pb2.ListModelsRequest(),
                                                                             timeout=5).models
    assert (model.name, model.workers) == (MODEL, 0)
