"""The DDP path: 2 CPU processes on the gloo backend train the CIML network and stay identical."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch.nn.parallel import DistributedDataParallel as DDP

from helpers import REGIONS, build_ciml_network as build
from nnunetv2_ciml.training.loss import KLRegularizedLoss
from nnunetv2_ciml.training.trainers import unwrap


def _worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # same initial weights on every rank, as DDP requires
    net, _ = build(REGIONS)
    ddp = DDP(net)
    # nnU-Net's region loss in its DDP form, with deep supervision, plus the KL term.
    seg_loss = DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": True},
                               use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    loss = KLRegularizedLoss(DeepSupervisionWrapper(seg_loss, [0.999999, 1e-6]), lambda: unwrap(ddp).kl)
    loss.beta = 1e-2
    optimizer = torch.optim.SGD(ddp.parameters(), 1e-2, momentum=0.99, nesterov=True)
    torch.manual_seed(100 + rank)  # different data per rank
    for _ in range(2):
        x = torch.randn(2, 3, 16, 16, 16)
        target = [(torch.rand(2, 2, 16, 16, 16) > 0.5).float(), (torch.rand(2, 2, 8, 8, 8) > 0.5).float()]
        optimizer.zero_grad(set_to_none=True)
        loss(ddp(x), target).backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save({"params": gathered, "message_norm": float(net.messages[0][0].project.weight.abs().sum())},
                   out_file)
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes that import torch and nnU-Net
def test_ddp_gloo_two_processes_identical_parameters(tmp_path):
    out_file = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    result = torch.load(out_file)
    assert torch.equal(result["params"][0], result["params"][1])
    assert result["message_norm"] > 0  # the messages trained too (zero-initialised projection moved)
