import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gcl_zoo.sampling import CBEN_PAPER, SAMPLERS, create_sampler

COUNTS = [500, 300, 180, 108, 64, 39, 23, 14, 8, 5]
LABELS = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])


def expected_probs(name, **kw):
    n = torch.tensor(COUNTS, dtype=torch.float64)
    if name == "instance":
        p = n
    elif name in ("class_balanced", "class_aware"):
        p = torch.ones_like(n)
    elif name == "sqrt":
        p = n.sqrt()
    elif name == "effective_number":
        beta = kw.get("beta", 0.9999)
        p = n * (1 - beta) / (1 - beta ** n)
    else:  # cben
        a, b = kw.get("a", 0.9999), kw.get("b", 1e-5)
        delta = math.log(n.max()) - n.log()
        beta = a + b * (delta - delta.min()) / (delta.max() - delta.min())
        p = n * (1 - beta) / (1 - beta ** n)
    return p / p.sum()


@pytest.mark.parametrize("name, kw", [
    ("instance", {}), ("class_balanced", {}), ("sqrt", {}), ("effective_number", {"beta": 0.99}),
    ("cben", {}), ("cben", CBEN_PAPER), ("class_aware", {}),
])
def test_empirical_class_frequencies_match_formula(name, kw):
    sampler = create_sampler(name, LABELS, num_samples=20000, seed=1, **kw)
    expected = expected_probs(name, **kw)
    assert torch.allclose(sampler.class_probabilities().double(), expected, atol=1e-9)
    counts = torch.zeros(len(COUNTS), dtype=torch.float64)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        idx = torch.tensor(list(sampler))
        counts += torch.bincount(LABELS[idx], minlength=len(COUNTS)).double()
    freq = counts / counts.sum()
    # binomial standard error of 100k draws is below 0.0016; allow 4 sigma
    assert torch.allclose(freq, expected, atol=0.0064), (freq, expected)


def test_cben_paper_and_code_presets_differ_and_are_exposed():
    code = create_sampler("cben", LABELS)
    paper = create_sampler("cben_paper", LABELS)
    assert (code.a, code.b) == (0.9999, 1e-5) and (paper.a, paper.b) == (0.999, 0.0009)
    betas = paper.class_betas()
    assert betas[0] == pytest.approx(0.999) and betas[-1] == pytest.approx(0.9999)
    with pytest.raises(ValueError, match="every beta below 1"):
        create_sampler("cben", LABELS, a=0.9999, b=0.001)


def test_instance_sampler_visits_every_image_once():
    sampler = create_sampler("instance", LABELS, seed=3)
    assert sorted(sampler) == list(range(len(LABELS)))


def test_reproducible_with_seed_and_epoch():
    a, b = create_sampler("cben", LABELS, seed=7), create_sampler("cben", LABELS, seed=7)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    state = b.state_dict()
    c = create_sampler("cben", LABELS, seed=0)
    c.load_state_dict(state)
    assert list(c) == list(b)


def test_unknown_sampler_is_clear():
    with pytest.raises(ValueError, match="unknown sampler 'balanced'"):
        create_sampler("balanced", LABELS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_draws(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        draws = {}
        for name in SAMPLERS:
            sampler = create_sampler(name, LABELS, seed=5)  # rank and world come from the process group
            sampler.set_epoch(2)
            draws[name] = list(sampler)
        out[rank] = draws
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_draw_disjoint_shares_of_one_epoch():
    world = 2
    manager = mp.get_context("spawn").Manager()
    out = manager.dict()
    mp.start_processes(_rank_draws, args=(world, _free_port(), out), nprocs=world, start_method="spawn")
    for name in SAMPLERS:
        single = create_sampler(name, LABELS, seed=5, num_replicas=1, rank=0)
        single.set_epoch(2)
        r0, r1 = out[0][name], out[1][name]
        assert len(r0) == len(r1) == math.ceil(len(LABELS) / 2)
        # the two shares interleave back into exactly the single-process epoch: disjoint positions, same draws
        merged = [None] * (len(r0) + len(r1))
        merged[0::2], merged[1::2] = r0, r1
        assert merged[:len(LABELS)] == list(single)[:len(LABELS)]
        if name == "instance":
            assert not set(r0) & set(r1)
