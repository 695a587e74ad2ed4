import pytest
import torch

from engine.sampler import Sampler, SamplingRow
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def row(params: SamplingParams, prompt=(1, 2), output=(), seed=0) -> SamplingRow:
    seq = Sequence("r", list(prompt), params, max_total_tokens=100)
    seq.output_token_ids = list(output)
    return SamplingRow(seq, torch.Generator().manual_seed(seed))


def test_greedy_picks_the_argmax_per_row():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    toks = Sampler(eos_token_ids=())(logits, [row(SamplingParams()), row(SamplingParams())])
    assert [t.token_id for t in toks] == [1, 0]


def test_seeded_draws_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    p = SamplingParams(temperature=1.0, seed=42)
    alone = Sampler(())(logits[1:2], [row(p, seed=42)])[0].token_id
    others = [row(SamplingParams(temperature=0.5), seed=s) for s in (1, 2)]
    batched = Sampler(())(logits, [others[0], row(p, seed=42), others[1]])[1].token_id
    assert alone == batched


def test_seeded_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    gen = row(SamplingParams(temperature=1.0), seed=3)
    counts = torch.zeros(3)
    for _ in range(2000):
        counts[Sampler(())(logits, [gen])[0].token_id] += 1
    assert torch.allclose(counts / 2000, torch.tensor([0.7, 0.2, 0.1]), atol=0.04)


def test_top_k_top_p_and_min_p_cut_the_tail():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for params, allowed in [
        (SamplingParams(temperature=1.0, top_k=2), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.6), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.4), {0}),
        (SamplingParams(temperature=1.0, min_p=0.5), {0, 1}),
    ]:
        seen = {Sampler(())(logits, [row(params, seed=s)])[0].token_id for s in range(200)}
        assert seen == allowed, params


def test_repetition_presence_and_frequency_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.9, 0.0]])
    # Token 0 was seen: 2.0 / 2 = 1.0 falls below token 2.
    assert Sampler(())(logits, [row(SamplingParams(repetition_penalty=2.0), prompt=(0,))])[0].token_id == 2
    # Frequency penalty scales with the count in the output; presence is a flat cost.
    out = row(SamplingParams(frequency_penalty=0.1), prompt=(3,), output=(0, 0))
    assert Sampler(())(logits, [out])[0].token_id == 2  # 2.0 - 0.2 < 1.9
    out = row(SamplingParams(presence_penalty=0.05), prompt=(3,), output=(0, 0))
    assert Sampler(())(logits, [out])[0].token_id == 0  # 2.0 - 0.05 > 1.9


def test_min_tokens_forbids_eos_and_stop_ids_until_reached():
    logits = torch.tensor([[0.0, 0.0, 9.0, 8.0, 7.0]])
    p = SamplingParams(min_tokens=2, stop_token_ids=[3])
    assert Sampler(eos_token_ids=(2,))(logits, [row(p, output=(1,))])[0].token_id == 4
    assert Sampler(eos_token_ids=(2,))(logits, [row(p, output=(1, 1))])[0].token_id == 2


def test_logprobs_are_the_raw_model_log_probabilities():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    tok = Sampler(())(logits, [row(SamplingParams(logprobs=True, top_logprobs=2, repetition_penalty=1.5))])[0]
    expected = torch.log_softmax(logits, -1)[0]
    assert tok.token_id == 2 and abs(tok.logprob - float(expected[2])) < 1e-6
    assert [t for t, _ in tok.top] == [2, 1]


@pytest.mark.gpu
def test_greedy_rows_on_cuda_take_the_cpu_tokens():
    # CUDA samples an all-greedy batch in one Triton launch (engine/layers/triton/argmax.py), the min_tokens
    # bans and penalties included; the CPU path is torch's argmax of the masked logits.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 49152, generator=g)
    logits[1, 7] = logits[1].max() + 1  # EOS on top: banned before min_tokens
    logits[2, 9] = logits[2].max() + 1  # a repeated token on top: penalized
    rows = [row(SamplingParams()), row(SamplingParams(min_tokens=3), output=(1,)),
            row(SamplingParams(repetition_penalty=1e9), prompt=(9,)), row(SamplingParams(min_tokens=1))]
    cpu = [t.token_id for t in Sampler(eos_token_ids=(7,))(logits, rows)]
    cuda = [t.token_id for t in Sampler(eos_token_ids=(7,))(logits.cuda(), rows)]
    assert cuda == cpu and cpu[1] != 7 and cpu[2] != 9
