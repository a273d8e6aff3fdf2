"""zmlx.torch ops inside torch.distributed: two processes train a model of
zmlx ops under DistributedDataParallel or FSDP2 (fully_shard) (gloo, CPU
tensors: runs anywhere),
and the result equals one process training on the whole batch (DDP averages
the ranks' gradients; each rank's loss is a mean over an equal share)."""
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ddp_worker  # noqa: E402


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="this PyTorch has no gloo backend")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_distributed_with_zmlx_ops_equals_one_process(tmp_path, mode):
    if mode == "fsdp":
        pytest.importorskip("torch.distributed.fsdp", reason="no FSDP2 in this PyTorch")
        from torch.distributed import fsdp
        if not hasattr(fsdp, "fully_shard"):
            pytest.skip("this PyTorch has no FSDP2 fully_shard")
    world = 2
    out = tmp_path / "rank0.pt"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # CPU tensors and gloo on any machine
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "ddp_worker.py"), str(r),
                               str(world), str(tmp_path / "store"), str(out), mode],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in range(world)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    got = torch.load(out)
    torch.manual_seed(0)
    model = ddp_worker.Net()
    x, y = ddp_worker.batch()
    losses = ddp_worker.train(model, x, y)
    for name, want in model.state_dict().items():
        torch.testing.assert_close(got["state"][name], want, rtol=1e-5, atol=1e-6, msg=name)
    # rank 0's losses are over its half: they fall, and differ from the whole batch's
    assert got["losses"][-1] < got["losses"][0]
    assert losses[-1] < losses[0]
    # the steps moved the parameters (a run that never stepped would match too)
    torch.manual_seed(0)
    start = ddp_worker.Net().state_dict()
    assert any(not torch.equal(start[k], v) for k, v in got["state"].items())
