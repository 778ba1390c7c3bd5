"""One DDP worker (launched by tests/test_ddp.py through torch.distributed.run, gloo on CPU).

Like Ultralytics' own DDP workers it is a fresh interpreter that never imports carafe_ultra: the CARAFE
rows of the YAML resolve only because the installed .pth registered them when ultralytics.nn.tasks loaded.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from ultralytics.nn.tasks import DetectionModel


def tensors(output):
    """Every tensor in a (nested) head output: Detect returns dicts or lists depending on the mode."""
    if isinstance(output, torch.Tensor):
        return [output]
    items = output.values() if isinstance(output, dict) else output
    return [t for item in items for t in tensors(item)]


def main(yaml_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DetectionModel(yaml_path, verbose=False).train()
    carafes = sum(type(m).__name__ in ("CARAFE", "CARAFEDown") for m in model.modules())
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    torch.manual_seed(rank)  # each rank sees its own data, as with a DistributedSampler
    for _ in range(3):  # an unused parameter would make the second step fail
        features = ddp(torch.rand(2, 3, 64, 64))
        loss = sum(t.float().square().mean() for t in tensors(features))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, weights)
    if rank == 0:
        equal = all(torch.equal(gathered[0], other) for other in gathered[1:])
        print(f"carafe_modules={carafes} weights_equal={equal}")
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Gloo's worker threads can still hold Python objects while the interpreter finalises and then abort
    # the process (SIGABRT, "terminate called without an active exception"); the work is done, so skip that.
    sys.stdout.flush()
    os._exit(0)
