"""`backend.comm=torch`: neighbour exchanges as torch.distributed point-to-point messages between agent hosts.

The agent-host actors form one process group (gloo on CPU, nccl when agents
run on a GPU); host 0 picks the address and a free port, and every host joins
with its rank. A round's exchange becomes, for each ordered pair of hosts
(a, b), at most one message: the payloads of a's agents that b's agents
need, concatenated (each sent once per host pair, however many of b's agents
read it). All messages of a round are posted together with
`batch_isend_irecv`. Agents on the same host read each other's payloads
directly. Bytes are counted per (sender agent, receiver agent), exactly as
with the object store, so the two give the same ledger.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import numpy as np
import torch

Rows = dict[int, tuple[float, list[tuple[int, float]]]]


def free_address(loopback: bool) -> tuple[str, int]:
    """This node's address (127.0.0.1 for a local run) and a free TCP port on it."""
    if loopback:
        addr = "127.0.0.1"
    else:
        import ray

        addr = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((addr, 0))
        return addr, s.getsockname()[1]


def init_group(rank: int, world: int, addr: str, port: int, *, device: str, timeout_s: float, loopback: bool) -> None:
    """Join the process group of all agent hosts (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    if loopback:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's sockets on 127.0.0.1 too
    dist.init_process_group(
        "nccl" if device.startswith("cuda") else "gloo", init_method=f"tcp://{addr}:{port}", rank=rank,
        world_size=world, timeout=timedelta(seconds=timeout_s),
    )


def destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# -- host operations (run on every agent host by the Ray backend) ----------------
def address(host, loopback: bool) -> tuple[str, int]:
    return free_address(loopback)


def join(host, rank: int, world: int, addr: str, port: int, loopback: bool) -> None:
    init_group(rank, world, addr, port, device=host.device, timeout_s=host.timeout_s, loopback=loopback)


def leave(host) -> None:
    destroy_group()


def host_plans(groups: list[list[int]], rows: Rows) -> list[tuple[Rows, dict[int, list[int]], dict[int, list[int]]]]:
    """Per host: (its agents' rows, {host: agent ids to send it}, {host: agent ids to receive from it})."""
    owner = {i: h for h, g in enumerate(groups) for i in g}
    send = [dict() for _ in groups]  # send[a][b]: ids of a's agents that host b needs
    for i, (_, row) in rows.items():
        b = owner[i]
        for j, _ in row:
            a = owner[j]
            if a != b:
                send[a].setdefault(b, set()).add(j)
    plans = []
    for h, g in enumerate(groups):
        mine = {i: rows[i] for i in g if i in rows}
        to = {b: sorted(ids) for b, ids in sorted(send[h].items())}
        frm = {a: sorted(send[a][h]) for a in range(len(groups)) if h in send[a]}
        plans.append((mine, to, frm))
    return plans


def reply_plans(groups: list[list[int]], rows: Rows) -> list[tuple[dict[int, list], dict[int, list]]]:
    """The way back (cga's cross-gradients): for every i that receives j's model, the message (i, j)
    goes from i's host to j's. Per host: ({host: keys to send it}, {host: keys to receive from it})."""
    owner = {i: h for h, g in enumerate(groups) for i in g}
    back = [dict() for _ in groups]  # back[a][b]: keys (i, j) with i on a, j on b
    for i, (_, row) in rows.items():
        for j, _ in row:
            if owner[i] != owner[j]:
                back[owner[i]].setdefault(owner[j], []).append((i, j))
    return [
        ({b: sorted(k) for b, k in sorted(back[h].items())},
         {a: sorted(back[a][h]) for a in range(len(groups)) if h in back[a]})
        for h in range(len(groups))
    ]


def swap(payloads: dict, send_to: dict[int, list], recv_from: dict[int, list], size: int, device: str,
         dtype=np.float32) -> dict:
    """Post every send and receive of this host at once; returns the received payloads by key (an agent,
    or a (sender, receiver) pair); every payload is `size` values of `dtype` (float32 vectors, or the uint8
    buffers of encoded messages)."""
    import torch.distributed as dist

    ops, inbox = [], {}
    for b, ids in send_to.items():
        buf = torch.from_numpy(np.concatenate([payloads[j] for j in ids])).to(device)
        ops.append(dist.P2POp(dist.isend, buf, b))
    for a, ids in recv_from.items():
        inbox[a] = (ids, torch.empty(len(ids) * size, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype,
                                     device=device))
        ops.append(dist.P2POp(dist.irecv, inbox[a][1], a))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    out = {}
    for ids, buf in inbox.values():
        flat = buf.cpu().numpy()
        out.update({j: flat[k * size : (k + 1) * size] for k, j in enumerate(ids)})
    return out
