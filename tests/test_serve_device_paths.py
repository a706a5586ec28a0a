"""The compiled and GPU serving paths, on the CPU: compiled graphs that live traffic really uses, decoded images
held at the model's input size, GPU decode fallbacks counted, and a broken device taking the server out of
readiness. (A CUDA device itself is stood in for only where a CPU cannot show the behaviour.)"""
from __future__ import annotations

import timm
import torch
import torch._dynamo

import gcl_zoo  # noqa: F401  (registers the zoo)
from serve.runner import ModelRunner


def test_compiled_runners_of_two_models_serve_the_graphs_warm_up_built(monkeypatch):
    """Warm-up compiles every bucket of every model; live batches of every size, from images and from tensors,
    reuse those graphs: none is rebuilt on live traffic and no model falls back to eager at the recompile limit."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, **{**kw, "backend": counting_backend}))
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(config, name, 2)  # a low starting limit: the runners must raise it for all their graphs
    torch._dynamo.reset()
    runners = [ModelRunner(model_id, timm.create_model(model_id).eval(), torch.device("cpu"), optimize="compile",
                           max_batch_size=4) for model_id in ("gcl_resnet32_cifar10_lt", "gcl_resnet32_cifar100_lt")]
    for runner in runners:
        runner.warmup(rounds=1)
    assert len(graphs) == 2 * len(runners[0].buckets) == 6
    for runner in runners:
        for n in (1, 2, 3, 4):
            runner.predict([torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)] * n)
            runner.predict_tensors([torch.randn(3, 32, 32)] * n)
    assert len(graphs) == 6
    torch._dynamo.reset()
