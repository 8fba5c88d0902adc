"""Compressed gossip end to end: messages travel encoded on every backend and transport, the ledger counts the
encoded bytes, error feedback and generators survive a resume, and what cannot be compressed is refused."""

from __future__ import annotations

import pytest

from cfg_helpers import crash_at
import dimat
from dimat import ConfigError, run
from dimat.compress import TopK
from dimat.metrics import read_metrics

FIGURES = ("acc_mean", "acc_avg_model", "consensus", "bytes_total")


def figures(res):
    return [{k: r.get(k) for k in FIGURES} for r in res.records]


def test_the_ledger_counts_the_encoded_bytes_and_a_lossless_setting_changes_nothing_else(tiny):
    base = ("algorithm=dsgd", "backend=inprocess", "rounds=3", "pretrain_epochs=0")
    plain = run(tiny(*base))
    exact = run(tiny(*base, "compress=topk", "compress.ratio=1.0"))
    lossy = run(tiny(*base, "compress=topk", "compress.ratio=0.1"))
    n = plain.summary["model_bytes"] // 4
    messages = plain.summary["bytes_total"] // (4 * n)
    assert exact.summary["bytes_total"] == messages * TopK(ratio=1.0).nbytes(n)  # indices too: 8 bytes a value
    assert lossy.summary["bytes_total"] == messages * TopK(ratio=0.1).nbytes(n)
    for a, b in zip(plain.records, exact.records):
        assert a["acc"] == b["acc"] and a["consensus"] == pytest.approx(b["consensus"], rel=1e-6)
    assert lossy.records[-1]["consensus"] != plain.records[-1]["consensus"]


def test_every_backend_and_transport_gives_the_same_compressed_run(tiny):
    base = ("algorithm=dsgd", "rounds=2", "pretrain_epochs=0", "compress=qsgd", "compress.bits=4",
            "compress.error_feedback=true")
    local = run(tiny(*base, "backend=inprocess"))
    ray_store = run(tiny(*base, "backend=ray", "backend.num_cpus=2"))
    ray_torch = run(tiny(*base, "backend=ray", "backend.num_cpus=2", "backend.comm=torch"))
    for other in (ray_store, ray_torch):  # the consensus is summed over hosts: equal to float rounding
        for a, b in zip(local.records, other.records):
            assert a["acc"] == b["acc"] and a["bytes_total"] == b["bytes_total"]
            assert a["consensus"] == pytest.approx(b["consensus"], rel=1e-9)


def test_a_resumed_run_with_error_feedback_equals_one_that_never_stopped(tiny, tmp_path):
    base = ("algorithm=dsgd", "backend=inprocess", "rounds=4", "run.checkpoint_every=2", "pretrain_epochs=0",
            "compress=randomk", "compress.ratio=0.2", "compress.error_feedback=true")
    full = run(tiny(*base, f"run.dir={tmp_path}/full"))
    crash_at(tiny(*base, f"run.dir={tmp_path}/crash"), at=3)
    dimat.resume(tmp_path / "crash")
    strip = lambda recs: [{k: r.get(k) for k in FIGURES} for r in recs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "crash")) == strip(read_metrics(full.run_dir))


@pytest.mark.parametrize("overrides,match", [
    (["algorithm=local", "compress=topk"], "sends nothing to compress"),
    (["algorithm=fedavg", "compress=topk"], "server phases"),
    (["algorithm=cga", "compress=sign"], "reply phases"),
    (["algorithm=dsgd", "compress=topk", "final_merge.rounds=2"], "final_merge.rounds"),
    (["algorithm=dsgd", "compress=qsgd", "compress.bits=3"], "compress.bits=3"),
    (["algorithm=dsgd", "compress.error_feedback=true"], "error_feedback applies to a lossy compressor"),
])
def test_what_cannot_be_compressed_is_refused_in_one_line(tiny, overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        run(tiny("backend=inprocess", *overrides))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_choco_without_compression_and_a_full_step_is_dsgd(tiny, backend):
    extra = ["backend.num_cpus=2"] if backend == "ray" else []
    base = ("rounds=3", "pretrain_epochs=0", f"backend={backend}", *extra)
    dsgd, choco = run(tiny("algorithm=dsgd", *base)), run(tiny("algorithm=choco", "algorithm.gamma=1.0", *base))
    for a, b in zip(dsgd.records, choco.records):
        assert a["acc"] == pytest.approx(b["acc"], abs=1 / 64)  # at most one test sample of 64 flips
        assert a["consensus"] == pytest.approx(b["consensus"], rel=1e-4)
        assert a["bytes_total"] == b["bytes_total"]


@pytest.mark.parametrize("overrides,match", [
    (["schedule=degree"], "a schedule that picks edges"),
    (["budget.exchanges=5"], "a byte or exchange budget"),
    (["topology=one_peer_exponential"], "a time-varying topology"),
    (["algorithm.gamma=1.5"], "algorithm.gamma=1.5"),
])
def test_choco_refuses_what_would_split_its_public_copies(tiny, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run(tiny("algorithm=choco", "backend=inprocess", "compress=topk", *overrides))


def test_dimat_over_a_lossless_channel_is_dimat(tiny):
    base = ("algorithm=dimat", "backend=inprocess", "rounds=2", "data=digits", "model.hidden=[32]")
    plain, exact = run(tiny(*base)), run(tiny(*base, "compress=qsgd", "compress.bits=32"))
    for a, b in zip(plain.records, exact.records):
        assert a["acc"] == pytest.approx(b["acc"], abs=0.01) and a["bytes_total"] == b["bytes_total"]


def test_public_copies_are_the_same_at_both_ends_and_approach_the_model():
    import numpy as np
    import torch

    from dimat.algorithms.base import Received
    from dimat.algorithms.public import PublicCopies
    from dimat.compress import Codec, TopK

    class Agent:  # what PublicCopies reads of an agent
        def __init__(self, index, vec):
            self.index, self.vec = index, vec
            self.layout = type("L", (), {"size": len(vec)})()

    codec = Codec(TopK(ratio=0.2), 0, [0, 1], [(50,)])
    sender, receiver = Agent(0, torch.randn(50)), Agent(1, torch.randn(50))
    pub = {0: PublicCopies(), 1: PublicCopies()}  # on two hosts
    for _ in range(30):
        msg, decoded = codec.send(0, pub[0].payload(sender))
        pub[0].sent(sender, decoded)
        pub[0].receive(sender, [])  # the sender folds what it sent into its own copy
        (got,) = pub[1].receive(receiver, [Received(0, codec.decode(msg, 50), 0.5)])
        np.testing.assert_array_equal(got.state, pub[0].own[0].numpy())  # the receiver's copy of 0 is 0's own
    assert torch.allclose(pub[0].own[0], sender.vec, atol=1e-5)  # top-20% differences reach the model itself


@pytest.mark.parametrize("algorithm", ["choco", "dimat"])
def test_public_copies_survive_a_resume(tiny, tmp_path, algorithm):
    base = (f"algorithm={algorithm}", "backend=inprocess", "rounds=4", "run.checkpoint_every=2", "pretrain_epochs=0",
            "compress=topk", "compress.ratio=0.1")
    full = run(tiny(*base, f"run.dir={tmp_path}/full"))
    crash_at(tiny(*base, f"run.dir={tmp_path}/crash"), at=3)
    dimat.resume(tmp_path / "crash")
    strip = lambda recs: [{k: r.get(k) for k in FIGURES} for r in recs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "crash")) == strip(read_metrics(full.run_dir))


def test_dimat_with_a_tracked_direction_refuses_compression(tiny):
    with pytest.raises(ConfigError, match="correction=gt sends more than its model"):
        run(tiny("algorithm=dimat", "algorithm.correction=gt", "compress=topk", "backend=inprocess"))
