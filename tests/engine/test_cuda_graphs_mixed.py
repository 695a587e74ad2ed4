"""Mixed CUDA graphs (engine/cuda_graphs.py): decodes joined by a prompt chunk replay one graph and give the
eager engine's tokens. A tiny random Llama (GQA) made here, so the test needs no bundled model; GPU only."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine import SamplingParams
from engine.cuda_graphs import StepGraphs

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_gqa_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger than the init's weights, so greedy picks are far apart
        for p in model.parameters():
            p.mul_(4.0)
    folder = tmp_path_factory.mktemp("tiny-gqa")
    model.save_pretrained(folder)
    return folder


def test_mixed_steps_replay_one_graph_and_give_the_eager_tokens(tiny_gqa_folder, monkeypatch,
                                                                eager_and_graphed_tokens):
    """Requests of different lengths join a running batch of at most 6 as others finish, so most
    admissions are a step of decodes plus one prompt chunk (some plus two: the second replays a prefill
    graph); prompts past the 64-token step budget arrive in chunks."""
    lens = (5, 40, 17, 9, 33, 70, 12, 3, 50, 21, 8, 64, 2, 29)
    prompts = [[(7 * i + 3 * j) % 500 + 1 for j in range(n)] for i, n in enumerate(lens)]
    params = [SamplingParams(max_tokens=m, ignore_eos=True, detokenize=False)
              for m in (6, 30, 12, 4, 18, 9, 25, 7, 11, 3, 20, 5, 14, 8)]
    mixed_replays = []
    run_mixed = StepGraphs._run_mixed

    def counting(self, inputs, previous_tokens):
        mixed_replays.append((inputs.leading_decodes, len(inputs.input_ids) - inputs.leading_decodes))
        return run_mixed(self, inputs, previous_tokens)

    monkeypatch.setattr(StepGraphs, "_run_mixed", counting)
    results = eager_and_graphed_tokens(tiny_gqa_folder, prompts, params, max_seq_len=256, max_batch_size=6,
                                       max_num_tokens=64)
    assert results[True] == results[False]
    assert [len(t) for t in results[True]] == [p.max_tokens for p in params]
    assert len(mixed_replays) >= 5, mixed_replays  # the graphs were used, with chunks of several sizes
    assert len({chunk for _, chunk in mixed_replays}) >= 3
