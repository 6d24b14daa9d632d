"""The distributed helpers outside torchrun are no-ops. Training under torchrun (DDP, gloo on the
CPU, 2 processes) is tested where a user starts it: a DVC stage whose launcher is torchrun
(tests/test_pipeline_e2e.py::test_a_training_stage_runs_under_torchrun)."""

import torch

from finch import distributed


def test_single_process_helpers_are_no_ops():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    idx = torch.arange(10)
    assert torch.equal(distributed.shard(idx), idx)
    assert distributed.mean_over_ranks(3.5) == 3.5
    rows = distributed.gather_rows(5, lambda i: {"p": i.numpy()[:, None] * 2.0})
    assert rows["p"][:, 0].tolist() == [0, 2, 4, 6, 8]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
