"""One rank of test_distributed.py: a small model built from zmlx.torch ops,
wrapped in DistributedDataParallel or sharded by FSDP2's fully_shard (gloo,
CPU tensors), trained a few SGD steps on this rank's half of a fixed batch;
rank 0 saves the whole parameters.

    python ddp_worker.py RANK WORLD STORE_FILE OUT_FILE ddp|fsdp"""
import sys

import torch
import torch.distributed as dist

import zmlx.torch as zt


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(16, 64)
        self.norm = torch.nn.Parameter(torch.rand(64) + 0.5)
        self.down = torch.nn.Linear(32, 8)

    def forward(self, x, y):
        h = zt.rms_norm(self.up(x), self.norm, 1e-6)
        return zt.cross_entropy(self.down(zt.swiglu_split(h)), y)


def batch():
    g = torch.Generator().manual_seed(1234)
    return torch.randn(8, 16, generator=g), torch.randint(0, 8, (8,), generator=g)


def train(model, x, y, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    mode = sys.argv[5]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(Net())
    else:  # on the CPU mesh explicitly (FSDP2 would pick CUDA where there is one)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        model = fully_shard(Net(), mesh=init_device_mesh("cpu", (world,)))
    x, y = batch()
    n = x.shape[0] // world
    losses = train(model, x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n])
    if mode == "ddp":
        state = model.module.state_dict()
    else:  # every rank takes part in gathering the shards
        state = {k: v.full_tensor() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save({"state": state, "losses": losses}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
