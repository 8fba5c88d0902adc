"""One exchange: the algorithm's phases run over the plan, on any transport.

Driver side, `run_exchange` walks `algorithm.phases` (see `dimat.algorithms.base`):

- ``gossip``: the hosts of the planned senders `publish` each sender's message
  once: put (an object-store reference with Ray) when another host reads it,
  kept on the host as a snapshot when only its own receivers do; every host
  then `deliver`s to its receivers the messages their rows name, fetching each
  message it needs from another host once.
- ``reply``: the replies the previous phase returned, keyed (replier, owner),
  are delivered to their owners along the reversed rows.
- ``server``: every agent's message goes to the driver, the driver's algorithm
  aggregates them, and the result is delivered to every agent.

With ``backend.comm=torch`` the neighbour phases of an exchange run inside one
call per host (`exchange_p2p`), their messages moved by torch.distributed
point-to-point sends (`dimat.runtime.p2p`). Either way the host side is the
same `_receive`: it calls the phase's handler for each receiver, resets the
optimizer after a merge when ``opt_state=reset``, rolls an agent whose
weights turn non-finite back, and reports every transfer it received.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dimat.algorithms.base import SERVER, Algorithm, Received
from dimat.compress import message_nbytes
from dimat.runtime.ops import rolled_back

Rows = dict[int, tuple[float, list[tuple[int, float]]]]  # receiver -> (self weight, [(source, weight)])
PLAIN = Algorithm()  # plain gossip averaging of the flat states (post-merge rounds), whatever the run's algorithm


def _algorithm(host, plain: bool):
    return PLAIN if plain else host.algorithm


# --------------------------------------------------------------------------- host side
def _encoded(host, k: int, plain: bool) -> bool:
    """Whether phase k's messages travel encoded by the host's compressor (gossip phases of the algorithm)."""
    return host.codec is not None and not plain and _algorithm(host, plain).phases[k].kind == "gossip"


def _messages(host, k: int, ids, plain: bool = False) -> dict[int, np.ndarray]:
    """Phase k's messages of the hosted agents `ids`, as contiguous float32 arrays -- or, where messages are
    compressed, as encoded messages (dicts of arrays; the algorithm hears what will be decoded from them,
    `Algorithm.sent`). Plain ones may be read-only views of the agents' live states (the default payload
    is): whatever must outlast a change to an agent is copied by the caller, once (`host.put`,
    `host.snapshot`)."""
    algo = _algorithm(host, plain)
    send = getattr(algo, algo.phases[k].send)
    encode = _encoded(host, k, plain)
    out, sent = {}, {}
    for i in ids:
        msg = np.ascontiguousarray(send(host.agents[i]), dtype=np.float32)
        expected = algo.message_floats(k, host.agents[i].layout)
        if msg.ndim != 1 or msg.size != expected:
            raise ValueError(f"{algo.label}.{algo.phases[k].send} made a message of shape {msg.shape}; "
                             f"message_floats({k}) declares {expected} float32 values")
        if encode:
            out[i], sent[i] = host.codec.send(i, msg)
            algo.sent(host.agents[i], k, sent[i])
        else:
            out[i] = sent[i] = msg
    if host.spec.track_sent and not plain:
        host.last_sent.update({i: v[: host.agents[i].layout.size].copy() for i, v in sent.items()})
    return out


def publish(host, k: int, ids: Sequence[int], plain: bool = False, local: Sequence[int] = ()) -> dict:
    """Handles to phase k's messages of the hosted agents `ids`, which another host (or the driver) reads; the
    messages of the agents `local`, which only this host's receivers read, stay here as snapshots. Each
    message is made and copied once (`ray.put` copies straight from the agent's state)."""
    msgs = _messages(host, k, sorted({*ids, *local}), plain)
    handles = host.put({j: msgs[j] for j in ids})
    host.outbox = ({j: host.snapshot((k, j), msgs[j]) for j in local}, handles)
    return handles


def deliver(host, k: int, rows: Rows, handles: dict, plain: bool = False) -> dict:
    """Phase k for this host's receivers: the messages `rows` names (the other hosts' by `handles`, this host's
    own as `publish` left them), handed to the phase's handler."""
    (kept, own), host.outbox = host.outbox, ({}, {})
    need = {j for i, (_, row) in rows.items() if i in host.agents for j, _ in row}
    inbox = {**kept, **host.fetch({**{j: h for j, h in own.items() if j in need}, **handles})}
    out = _receive(host, k, rows, inbox, plain)
    out["replies"] = host.put(out["replies"])
    return out


def _receive(host, k: int, rows: Rows, inbox: dict, plain: bool = False) -> dict:
    algo = _algorithm(host, plain)
    phase = algo.phases[k]
    last = k == len(algo.phases) - 1
    handler = getattr(algo, phase.receive)
    if k == 0:
        host.received.clear()
    ids = list(host.agents) if phase.every_agent else [i for i in rows if i in host.agents]
    transfers, replies, back, merge_s = [], {}, [], 0.0
    decoded: dict = {}  # an encoded message is decoded once per host, however many of its agents read it
    n = algo.message_floats(k, host.layout()) if _encoded(host, k, plain) else 0

    def message(key):
        wire = inbox[key]
        if not isinstance(wire, dict):
            return wire
        if key not in decoded:
            decoded[key] = host.codec.decode(wire, n)
        return decoded[key]

    for i in ids:
        a = host.agents[i]
        self_w, row = rows.get(i, (1.0, []))
        keys = [(j, i) if phase.kind == "reply" else j for j, _ in row]
        transfers += [(j, i, message_nbytes(inbox[key])) for (j, _), key in zip(row, keys)]
        received = [Received(j, message(key), w) for (j, w), key in zip(row, keys)]
        if received:
            host.received.add(i)
        good = None
        if last:  # what every algorithm needs after a merge, done here once
            if i in host.received and algo.opt_state == "reset":
                a.reset_optimizer()
            good = host.saved(a.vec)  # one agent at a time: a buffer the host reuses
        t0 = time.perf_counter()
        out = handler(a, self_w, received)
        merge_s += time.perf_counter() - t0
        if out:
            replies.update({(i, j): _reply(algo, k, a, v) for j, v in out.items()})
        if good is not None and rolled_back(a, good):
            back.append(i)
    return {"transfers": transfers, "merge_s": merge_s, "rolled_back": back, "replies": replies}


def _reply(algo, k: int, agent, value) -> np.ndarray:
    """A handler's reply to one source, checked against the next phase's declared message size."""
    msg = np.ascontiguousarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float32)
    if k + 1 >= len(algo.phases) or algo.phases[k + 1].kind != "reply":
        raise ValueError(f"{algo.label}.{algo.phases[k].receive} returned replies, but no reply phase follows it")
    expected = algo.message_floats(k + 1, agent.layout)
    if msg.ndim != 1 or msg.size != expected:
        raise ValueError(f"{algo.label}.{algo.phases[k].receive} replied with shape {msg.shape}; "
                         f"message_floats({k + 1}) declares {expected} float32 values")
    return msg


def exchange_p2p(host, plans: list[tuple[Rows, dict, dict]], plain: bool = False) -> dict:
    """Every neighbour phase of an exchange, remote messages by point-to-point sends: plans[k] is this host's
    (rows, {host: keys to send it}, {host: keys to receive from it}) for phase k."""
    from dimat.runtime import p2p

    algo, layout = _algorithm(host, plain), host.layout()
    total = {"transfers": [], "merge_s": 0.0, "rolled_back": [], "phases": []}
    replies: dict = {}
    for k, (rows, send_to, recv_from) in enumerate(plans):
        size = algo.message_floats(k, layout)
        if algo.phases[k].kind == "gossip":
            local = {j for _, row in rows.values() for j, _ in row if j in host.agents}
            made = _messages(host, k, sorted(local.union(*send_to.values())), plain)
            outgoing = {j: host.snapshot((k, j), v) for j, v in made.items()}  # local receivers merge in place
        else:  # the previous phase's replies: local ones directly, the others by message
            outgoing = replies
        if _encoded(host, k, plain):  # encoded messages travel as one byte buffer each, of a size fixed by n
            c = host.codec.compressor
            wire = {j: c.pack(v, size) for j, v in outgoing.items()}
            got = p2p.swap(wire, send_to, recv_from, c.nbytes(size), host.device, dtype=np.uint8)
            arrived = {j: c.unpack(buf, size) for j, buf in got.items()}
        else:
            arrived = p2p.swap(outgoing, send_to, recv_from, size, host.device)
        res = _receive(host, k, rows, {**outgoing, **arrived}, plain)
        replies = res.pop("replies")
        total["phases"].append(res["transfers"])
        total["transfers"] += res["transfers"]
        total["merge_s"] += res["merge_s"]
        total["rolled_back"] += res["rolled_back"]
    return total


# --------------------------------------------------------------------------- driver side
@dataclass
class Outcome:
    """What one exchange did: (source, destination, bytes) transfers (also by phase, for the network clock),
    handler time, agents rolled back."""

    transfers: list = field(default_factory=list)
    merge_s: float = 0.0
    rolled_back: list = field(default_factory=list)
    phases: list = field(default_factory=list)  # the transfers of each phase, in order

    def add(self, results: list[dict]) -> None:
        """One phase's results, from every host (or, from `exchange_p2p`, every phase of each host)."""
        if results and "phases" in results[0]:  # exchange_p2p: every phase of each host at once
            for res in results:
                for k, moved in enumerate(res["phases"]):
                    if k == len(self.phases):
                        self.phases.append([])
                    self.phases[k] += moved
        elif results:  # one phase, from every host
            self.phases.append([t for res in results for t in res["transfers"]])
        for res in results:
            self.transfers += res["transfers"]
            self.merge_s += res["merge_s"]
            self.rolled_back += res["rolled_back"]


def reverse_rows(rows: Rows) -> Rows:
    """The rows of a reply phase: owner j hears back from every i that received j's message, with the
    weight i gave it (and keeps its own self weight)."""
    back: dict[int, list[tuple[int, float]]] = {}
    for i, (_, row) in rows.items():
        for j, w in row:
            back.setdefault(j, []).append((i, w))
    return {j: (rows[j][0] if j in rows else 1.0, sorted(src)) for j, src in back.items()}


def split_senders(groups: list[list[int]], rows: Rows) -> tuple[list[list[int]], list[list[int]]]:
    """Per host, the planned senders among its agents that another host's receivers read (their messages go
    to the object store) and those that only its own receivers read (their messages stay on the host)."""
    owner = {i: h for h, g in enumerate(groups) for i in g}
    senders = {j for _, row in rows.values() for j, _ in row}
    remote = {j for i, (_, row) in rows.items() for j, _ in row if owner.get(i) != owner.get(j)}
    return ([sorted(j for j in g if j in remote) for g in groups],
            [sorted(j for j in g if j in senders - remote) for g in groups])


def _merge(dicts: list[dict]) -> dict:
    out = {}
    for d in dicts:
        out.update(d)
    return out


def run_exchange(backend, algorithm, rows: Rows, alive: list[int], sizes: dict[int, int],
                 plain: bool = False) -> Outcome:
    """Run the algorithm's phases over `rows` on every host (`plain`: one round of plain gossip averaging
    instead, whatever the hosts' algorithm); see the module docstring."""
    if plain:
        algorithm = PLAIN
    phases = algorithm.phases
    outcome = Outcome()
    if backend.comm == "torch":
        from dimat.runtime.p2p import host_plans, reply_plans

        per_phase, prev = [], rows
        for p in phases:
            if p.kind == "gossip":
                per_phase.append(host_plans(backend.groups, rows))
                prev = rows
            else:
                back = reverse_rows(prev)
                per_phase.append([({j: back[j] for j in g if j in back}, to, frm)
                                  for g, (to, frm) in zip(backend.groups, reply_plans(backend.groups, prev))])
        outcome.add(backend.run_each(exchange_p2p, [([pp[h] for pp in per_phase], plain)
                                                    for h in range(len(backend.groups))]))
        return outcome
    replies: dict = {}
    prev = rows
    for k, p in enumerate(phases):
        if p.kind == "server":
            handles = _merge(backend.run_each(publish, [(k, [i for i in g if i in alive], plain)
                                                        for g in backend.groups]))
            payloads = backend.fetch(handles)
            uploads = [(i, SERVER, int(v.nbytes)) for i, v in sorted(payloads.items())]
            outcome.transfers += uploads
            outcome.phases.append(uploads)
            mean = np.ascontiguousarray(algorithm.aggregate(payloads, sizes), dtype=np.float32)
            ref = backend.put(mean)
            phase_rows = {i: (0.0, [(SERVER, 1.0)]) for i in alive}
            args = [(k, {i: phase_rows[i] for i in g if i in phase_rows}, {SERVER: ref}, plain) for g in backend.groups]
        elif p.kind == "gossip":
            remote, local = split_senders(backend.groups, rows)
            handles = _merge(backend.run_each(publish, [(k, r, plain, lo) for r, lo in zip(remote, local)]))
            args = []
            for g in backend.groups:
                mine = {i: rows[i] for i in g if i in rows}
                need = {j for _, row in mine.values() for j, _ in row} - set(g)  # this host's own: kept or put
                args.append((k, mine, {j: handles[j] for j in need}, plain))
            prev = rows
        else:
            back = reverse_rows(prev)
            args = [(k, {j: back[j] for j in g if j in back},
                     {key: ref for key, ref in replies.items() if key[1] in g}, plain) for g in backend.groups]
        results = backend.run_each(deliver, args)
        replies = _merge([res["replies"] for res in results])
        outcome.add(results)
    return outcome
