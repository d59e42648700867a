"""The DDP path: 2 CPU processes on the gloo backend train each CIML network variant and stay identical.

DDP fails at the second iteration when a parameter gets no gradient ("Expected to have finished reduction");
the no-message ablation, whose sender-only modalities feed no decoder, is the variant that would show it."""
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
from nnunetv2_ciml.network import modalities_present, unwrap
from nnunetv2_ciml.training.modality_dropout import sample_present_modalities


def _worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    results = {variant: _train(rank, world_size, *flags) for variant, flags in VARIANTS.items()}
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


# Trainer variants by the network they build (the beta variants build the CIML network): (messages, modality
# dropout, shared branches). With dropout each rank masks different modalities, the absent-primary gate bias
# included.
VARIANTS = {"nnUNetTrainerCIML": (True, False, False), "nnUNetTrainerCIML_noMessages": (False, False, False),
            "nnUNetTrainerCIML_modalityDropout": (True, True, True),
            "grouped branches with modality dropout": (True, True, False)}


def _train(rank: int, world_size: int, messages: bool, dropout: bool, shared: bool) -> dict:
    torch.manual_seed(0)  # same initial weights on every rank, as DDP requires
    net, _ = build(REGIONS, messages=messages, shared_branches=shared)
    ddp = DDP(net)
    # nnU-Net's region loss in its DDP form, with deep supervision, plus the KL term.
    seg_loss = DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": True},
                               use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    loss = KLRegularizedLoss(DeepSupervisionWrapper(seg_loss, [0.999999, 1e-6]), lambda: unwrap(ddp).kl)
    loss.beta = 1e-2
    optimizer = torch.optim.SGD(ddp.parameters(), 1e-2, momentum=0.99, nesterov=True)
    torch.manual_seed(100 + rank)  # different data per rank
    for _ in range(3):
        x = torch.randn(2, 3, 16, 16, 16)
        target = [(torch.rand(2, 2, 16, 16, 16) > 0.5).float(), (torch.rand(2, 2, 8, 8, 8) > 0.5).float()]
        optimizer.zero_grad(set_to_none=True)
        present = sample_present_modalities(2, 3, 1.0) if dropout else None
        with modalities_present(ddp, present):
            loss(ddp(x), target).backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    return {"params": gathered,
            "message_norm": sum(float(m.project.weight.abs().sum()) for m in net.messages.values())}


@pytest.mark.slow  # two fresh processes that import torch and nnU-Net
def test_ddp_gloo_two_processes_identical_parameters(tmp_path):
    out_file = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    results = torch.load(out_file)
    for result in results.values():
        assert torch.equal(result["params"][0], result["params"][1])
    assert results["nnUNetTrainerCIML"]["message_norm"] > 0  # the messages trained (zero projection moved)
