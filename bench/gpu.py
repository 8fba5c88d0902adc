"""The GPU path in one run: what a machine with a GPU checks and prints (driven by bench/gpu.sh).

    bash bench/gpu.sh            # on a machine with a GPU: each check at its real size, < 5 minutes
    bash bench/gpu.sh --dry-run  # anywhere: every check at a tiny size on the CPU (the script itself works)

Checks, each timed and printed as one line:
1. the default job with backend.device=auto (the agents land on the GPU when there is one);
2. 256 vectorized MLP agents in-process on the GPU (per-round time);
3. 64 CNN agents with `ln`, per-agent loop vs vmapped group (per-round time, side by side);
4. activation matching of two ResNet-20×4 on the GPU against their forward passes;
5. backend.comm=torch (nccl between actors sharing the GPU) against the object store: same bytes, same accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from _common import compose_cfg, run


def timed(overrides: list[str], tmp: str) -> tuple[float, dict, list[dict]]:
    t0 = time.perf_counter()
    res = run(compose_cfg([*overrides, f"run.dir={tmp}/{time.monotonic_ns()}", "run.progress=false",
                           "run.checkpoint_every=0"]))
    return time.perf_counter() - t0, res.summary, res.records


def per_round(records: list[dict]) -> float:
    return records[-1]["wall_s"] / records[-1]["round"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: check that the script runs")
    a = ap.parse_args()
    dry = a.dry_run
    if not dry and not torch.cuda.is_available():
        print("bench/gpu.py: no GPU visible (torch.cuda.is_available() is False); use --dry-run to check the script")
        return 2
    dev = "cpu" if dry else "cuda"
    print(f"bench/gpu.py · device {dev} · {torch.cuda.get_device_name(0) if not dry else 'dry run, tiny sizes'}")
    data = ["data=synthetic", "data.shape=[1,28,28]", "data.num_classes=10"] if not dry else ["data=synthetic"]
    big = 20000 if not dry else 600
    with tempfile.TemporaryDirectory() as tmp:
        # 1. the default job, device chosen automatically
        wall, s, _ = timed(["backend.device=auto"] + (["rounds=2"] if dry else []), tmp)
        print(f"1 default job (backend.device=auto): {wall:.1f} s total, final acc {100 * s['final_acc_mean']:.1f}%, "
              f"global merge {100 * s['final_acc_global_merge']:.1f}%")
        # 2. many vectorized MLP agents on one device
        n = 256 if not dry else 8
        common = [*data, f"data.n_train={big}", "data.n_test=2000", "model=mlp", f"agents={n}", "topology=ring",
                  "partition=iid", "algorithm=dsgd", "rounds=3", "batch_size=16", "backend=inprocess",
                  f"backend.device={dev}", "final_merge.enabled=false"]
        wall, s, recs = timed([*common, "backend.vectorize=true"], tmp)
        print(f"2 {n} vectorized mlp agents: {per_round(recs):.2f} s per round ({wall:.1f} s total)")
        # 3. CNN agents, per-agent loop vs vmapped group
        n = 64 if not dry else 4
        cnn = [*data, f"data.n_train={big}", "data.n_test=2000", "model=cnn", "model.norm=ln", f"agents={n}",
               "topology=ring", "partition=iid", "algorithm=dsgd", "rounds=2", "batch_size=16", "backend=inprocess",
               f"backend.device={dev}", "final_merge.enabled=false"]
        loop = per_round(timed(cnn, tmp)[2])
        vmapped = per_round(timed([*cnn, "backend.vectorize=true"], tmp)[2])
        print(f"3 {n} cnn agents (ln): loop {loop:.2f} s per round, vmapped {vmapped:.2f} s per round "
              f"(vmapped / loop = {vmapped / loop:.2f})")
        # 4. activation matching on the device
        from dimat.merge import PermutationSpec, activation_matching
        from dimat.models import resnet20

        width, samples = (4, 512) if not dry else (1, 32)
        x = torch.randn(samples, 3, 32, 32, device=dev)
        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            models.append(resnet20((3, 32, 32), 10, width=width).to(dev).eval())
        spec = PermutationSpec.from_model(models[0].cpu(), x[:2].cpu())
        models = [m.to(dev) for m in models]
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            models[0](x), models[1](x)
        sync()
        forward = time.perf_counter() - t0
        t0 = time.perf_counter()
        activation_matching(spec, models[0], models[1], x)
        sync()
        am = time.perf_counter() - t0
        print(f"4 activation matching, resnet20x{width} on {samples} inputs: {am:.2f} s "
              f"({am / max(forward, 1e-9):.1f}x the two forward passes, {forward:.3f} s)")
        # 5. torch.distributed between actors (nccl on the GPU, gloo in a dry run) vs the object store
        p2p = [*data, "model=mlp", "agents=4", "rounds=2", "algorithm=dsgd", "backend=ray", "backend.num_cpus=2",
               "backend.agents_per_actor=1", f"backend.device={dev}", "backend.timeout_s=300"]
        _, store, rs = timed(p2p, tmp)
        _, torch_comm, rt = timed([*p2p, "backend.comm=torch"], tmp)
        same = store["bytes_total"] == torch_comm["bytes_total"] and all(
            abs(x - y) < 1e-5 for ra, rb in zip(rs, rt) for x, y in zip(ra["acc"], rb["acc"]))
        print(f"5 backend.comm=torch ({'gloo' if dry else 'nccl'}) vs object_store: "
              f"{'same bytes and accuracies' if same else 'DIFFERENT results'} "
              f"({torch_comm['bytes_total']:,} bytes)")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
