"""Compressed messages: what travels when an agent sends a vector (its state, or a difference) to its neighbours.

A compressor encodes a float32 vector into a *message*: a dict of numpy arrays whose layout depends only on
the vector's length (`fields(n)`), so every transport can carry it -- Ray's object store as it is,
torch.distributed as one byte buffer of `nbytes(n)` -- and the ledger counts exactly the bytes of those
arrays. The receiver decodes it back into a float32 vector. Pure numpy, no transport, no agent:

- `none`: the vector itself (the transports' plain path; nothing is encoded);
- `topk` (`ratio`): the k = ⌈ratio·n⌉ largest |vᵢ|, as int32 indices and float32 values;
- `randomk` (`ratio`): k values at indices drawn from a seed that travels with them (8 bytes), unscaled;
- `qsgd` (`bits` = 2, 4 or 8; 32 = the float32 vector; `bucket`): QSGD's stochastic quantisation with
  bucketing, the norm of each bucket and, per coordinate, a sign and one of 2^(bits−1) − 1 levels packed
  `bits` to a coordinate, unbiased;
- `sign`: scaled sign, (‖v‖₁/n)·sign(v), one bit a coordinate and one float32 (biased: use error feedback);
- `lowrank` (`rank`): PowerSGD's rank-r approximation of every matrix-shaped tensor of the state (a
  power-iteration step from a seeded random basis: P = MQ orthonormalised, then Q = MᵀP, both sent); other
  tensors travel whole.

A user's own compressor subclasses `Compressor` (`fields`, `encode`, `decode`) and is named by `_target_`.
Randomness (random-k's indices, QSGD's rounding, the low-rank basis) comes from a `numpy.random.Generator`
the caller owns per sender (seeded from the run's seed; saved in checkpoints).

Error feedback (`error_feedback=true`): the sender adds to each vector what earlier messages dropped,
e ← (v + e) − decode(encode(v + e)), so what compression drops is sent later rather than lost
(`ErrorFeedback`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Message = dict[str, np.ndarray]


class CompressError(ValueError):
    """A compressor's options are invalid (one line, naming the key)."""


class Compressor:
    """The interface: `fields(n)` (name -> (dtype, length)) fixes the message layout for vectors of n floats;
    `encode(v, rng) -> message`; `decode(message, n) -> float32 vector`. `lossless` compressors decode
    exactly what was encoded."""

    name = "none"
    lossless = True

    def __init__(self, *, error_feedback: bool = False) -> None:
        self.error_feedback = bool(error_feedback)
        if self.error_feedback and self.name == "none":
            raise CompressError("compress.error_feedback applies to a lossy compressor: compress=none drops nothing")

    def setup(self, shapes: Sequence[tuple[int, ...]]) -> None:
        """The shapes of the tensors laid out in the vectors this compressor will see (for `lowrank`)."""

    def fields(self, n: int) -> dict[str, tuple[np.dtype, int]]:
        return {"v": (np.dtype(np.float32), n)}

    def nbytes(self, n: int) -> int:
        """The bytes of one message for a vector of n floats (what the ledger prices)."""
        return sum(dt.itemsize * size for dt, size in self.fields(n).values())

    def encode(self, v: np.ndarray, rng: np.random.Generator) -> Message:
        return {"v": np.ascontiguousarray(v, dtype=np.float32)}

    def decode(self, message: Message, n: int) -> np.ndarray:
        return np.asarray(message["v"], dtype=np.float32)

    # -- one buffer per message (torch.distributed) ------------------------------------------------
    def pack(self, message: Message, n: int) -> np.ndarray:
        """The message as one uint8 buffer of `nbytes(n)` (fields in `fields` order)."""
        parts = []
        for name, (dt, size) in self.fields(n).items():
            a = np.ascontiguousarray(message[name], dtype=dt).reshape(-1)
            if a.size != size:
                raise ValueError(f"compress={self.name}: field {name} has {a.size} values, fields({n}) says {size}")
            parts.append(a.view(np.uint8))
        return np.concatenate(parts) if parts else np.zeros(0, np.uint8)

    def unpack(self, buf: np.ndarray, n: int) -> Message:
        out, off = {}, 0
        for name, (dt, size) in self.fields(n).items():
            width = dt.itemsize * size
            out[name] = np.frombuffer(buf[off : off + width].tobytes(), dtype=dt)
            off += width
        return out


def message_nbytes(message) -> int:
    """The bytes a message carries (a plain float32 vector, or a compressor's dict of arrays)."""
    if isinstance(message, dict):
        return int(sum(a.nbytes for a in message.values()))
    return int(message.nbytes)


def _k(ratio: float, n: int) -> int:
    return max(1, min(n, math.ceil(ratio * n)))


class _Ratio(Compressor):
    def __init__(self, *, ratio: float = 0.01, error_feedback: bool = False) -> None:
        super().__init__(error_feedback=error_feedback)
        if not 0 < ratio <= 1:
            raise CompressError(f"compress.ratio={ratio} must be in (0, 1]: the share of coordinates sent")
        self.ratio = float(ratio)
        self.lossless = self.ratio == 1


class TopK(_Ratio):
    """The k largest |vᵢ|: indices and values."""

    name = "topk"

    def fields(self, n: int) -> dict:
        k = _k(self.ratio, n)
        return {"idx": (np.dtype(np.int32), k), "val": (np.dtype(np.float32), k)}

    def encode(self, v: np.ndarray, rng: np.random.Generator) -> Message:
        k = _k(self.ratio, len(v))
        idx = np.arange(len(v)) if k == len(v) else np.argpartition(np.abs(v), len(v) - k)[len(v) - k :]
        idx = np.sort(idx).astype(np.int32)
        return {"idx": idx, "val": v[idx].astype(np.float32)}

    def decode(self, message: Message, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        out[message["idx"]] = message["val"]
        return out


class RandomK(_Ratio):
    """k values at indices drawn without replacement from a seed sent along (8 bytes)."""

    name = "randomk"

    def fields(self, n: int) -> dict:
        return {"seed": (np.dtype(np.int64), 1), "val": (np.dtype(np.float32), _k(self.ratio, n))}

    @staticmethod
    def _indices(seed: int, n: int, k: int) -> np.ndarray:
        return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if k < n else np.arange(n)

    def encode(self, v: np.ndarray, rng: np.random.Generator) -> Message:
        seed = int(rng.integers(0, 2**62))
        idx = self._indices(seed, len(v), _k(self.ratio, len(v)))
        return {"seed": np.array([seed], np.int64), "val": v[idx].astype(np.float32)}

    def decode(self, message: Message, n: int) -> np.ndarray:
        idx = self._indices(int(message["seed"][0]), n, len(message["val"]))
        out = np.zeros(n, np.float32)
        out[idx] = message["val"]
        return out


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes < 2^bits, `bits` in {1, 2, 4, 8}, packed 8/bits to a byte (little end first)."""
    per = 8 // bits
    pad = (-len(codes)) % per
    c = np.concatenate([codes.astype(np.uint8), np.zeros(pad, np.uint8)]).reshape(-1, per)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(c << shifts, axis=1).astype(np.uint8)


def _unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    per = 8 // bits
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]


class QSGD(Compressor):
    """QSGD (Alistarh et al. 2017) with bucketing: in each bucket of `bucket` coordinates,
    vᵢ ≈ ‖v_bucket‖₂·sign(vᵢ)·ξᵢ/s with ξᵢ ∈ {l, l+1} drawn so the estimate is unbiased, s = 2^(bits−1) − 1
    levels; one float32 norm per bucket. `bits`=32 sends the float32 vector."""

    name = "qsgd"

    def __init__(self, *, bits: int = 4, bucket: int = 512, error_feedback: bool = False) -> None:
        super().__init__(error_feedback=error_feedback)
        if bits not in (2, 4, 8, 32):
            raise CompressError(f"compress.bits={bits} is not offered: use 2, 4, 8 or 32 (lossless)")
        if bucket < 1:
            raise CompressError(f"compress.bucket={bucket} must be >= 1: coordinates sharing one norm")
        self.bits, self.bucket = int(bits), int(bucket)
        self.lossless = self.bits == 32
        if self.lossless and bucket != QSGD.__init__.__kwdefaults__["bucket"]:
            raise CompressError(f"compress.bucket={bucket} groups quantized coordinates, and compress.bits=32 sends "
                                "floats: drop compress.bucket or give bits 2, 4 or 8")

    def fields(self, n: int) -> dict:
        if self.lossless:
            return {"v": (np.dtype(np.float32), n)}
        return {"norms": (np.dtype(np.float32), math.ceil(n / self.bucket)),
                "codes": (np.dtype(np.uint8), math.ceil(n * self.bits / 8))}

    def _buckets(self, n: int) -> np.ndarray:
        return np.arange(n) // self.bucket

    def encode(self, v: np.ndarray, rng: np.random.Generator) -> Message:
        if self.lossless:
            return super().encode(v, rng)
        s = (1 << (self.bits - 1)) - 1
        x = v.astype(np.float64)
        norms = np.sqrt(np.bincount(self._buckets(len(v)), weights=x * x)).astype(np.float32)
        per = norms.astype(np.float64)[self._buckets(len(v))]
        scaled = np.divide(np.abs(x) * s, per, out=np.zeros(len(v)), where=per > 0)
        low = np.floor(scaled)
        level = np.minimum(low + (rng.random(len(v)) < scaled - low), s).astype(np.uint8)  # unbiased rounding
        codes = level | ((v < 0).astype(np.uint8) << (self.bits - 1))
        return {"norms": norms, "codes": _pack_bits(codes, self.bits)}

    def decode(self, message: Message, n: int) -> np.ndarray:
        if self.lossless:
            return super().decode(message, n)
        s = (1 << (self.bits - 1)) - 1
        codes = _unpack_bits(np.asarray(message["codes"]), self.bits, n)
        level = (codes & ((1 << (self.bits - 1)) - 1)).astype(np.float32)
        sign = np.where(codes >> (self.bits - 1), -1.0, 1.0).astype(np.float32)
        return (np.asarray(message["norms"], dtype=np.float32)[self._buckets(n)] / s) * sign * level


class Sign(Compressor):
    """Scaled sign (EF-SignSGD): (‖v‖₁/n)·sign(vᵢ), one bit a coordinate."""

    name = "sign"
    lossless = False

    def fields(self, n: int) -> dict:
        return {"scale": (np.dtype(np.float32), 1), "bits": (np.dtype(np.uint8), math.ceil(n / 8))}

    def encode(self, v: np.ndarray, rng: np.random.Generator) -> Message:
        scale = float(np.abs(v.astype(np.float64)).mean()) if len(v) else 0.0
        return {"scale": np.array([scale], np.float32), "bits": np.packbits(v < 0, bitorder="little")}

    def decode(self, message: Message, n: int) -> np.ndarray:
        neg = np.unpackbits(np.asarray(message["bits"]), count=n, bitorder="little").astype(bool)
        return np.where(neg, -1.0, 1.0).astype(np.float32) * float(message["scale"][0])


class LowRank(Compressor):
    """PowerSGD's rank-r step on every tensor of two or more dimensions (as a matrix [dim 0, rest]): with Q a
    seeded random [cols, r] basis, P = orth(M Q) and Q' = Mᵀ P; P and Q' travel (M ≈ P Q'ᵀ, exact when r covers
    the smaller side). Vectors (biases, norms) and tensors no smaller compressed travel whole."""

    name = "lowrank"

    def __init__(self, *, rank: int = 4, error_feedback: bool = False) -> None:
        super().__init__(error_feedback=error_feedback)
        if rank < 1:
            raise CompressError(f"compress.rank={rank} must be >= 1")
        self.rank = int(rank)
        self.shapes: list[tuple[int, ...]] | None = None
        self.lossless = False

    def setup(self, shapes: Sequence[tuple[int, ...]]) -> None:
        self.shapes = [tuple(s) for s in shapes]

    def _plan(self, n: int) -> list[tuple[int, int, int, int]]:
        """(offset, rows, cols, r) per tensor; r = 0: sent whole. Tensors beyond the shapes (a longer message,
        e.g. a state and its momentum) repeat the layout."""
        if not self.shapes:
            raise CompressError("compress=lowrank needs the tensors' shapes (setup) before it encodes")
        plan, off = [], 0
        while off < n:
            for shape in self.shapes:
                size = math.prod(shape)
                rows, cols = (shape[0], size // shape[0]) if len(shape) >= 2 and size else (size, 1)
                r = min(self.rank, rows, cols) if len(shape) >= 2 else 0
                if r and r * (rows + cols) >= size:
                    r = 0  # no smaller: whole
                plan.append((off, rows, cols, r))
                off += size
        if off != n:
            raise CompressError(f"compress=lowrank: a message of {n} floats does not match the model's tensors")
        return plan

    def fields(self, n: int) -> dict:
        plan = self._plan(n)
        factors = sum(r * (rows + cols) for _, rows, cols, r in plan)
        whole = sum(rows * cols for _, rows, cols, r in plan if not r)
        return {"factors": (np.dtype(np.float32), factors), "whole": (np.dtype(np.float32), whole)}

    def encode(self, v: np.ndarray, rng: np.random.Generator) -> Message:
        factors, whole = [], []
        for off, rows, cols, r in self._plan(len(v)):
            m = v[off : off + rows * cols].reshape(rows, cols).astype(np.float64)
            if not r:
                whole.append(m.reshape(-1))
                continue
            q = rng.standard_normal((cols, r))
            p, _ = np.linalg.qr(m @ q)
            factors += [p.reshape(-1), (m.T @ p).reshape(-1)]
        return {"factors": np.concatenate(factors).astype(np.float32) if factors else np.zeros(0, np.float32),
                "whole": np.concatenate(whole).astype(np.float32) if whole else np.zeros(0, np.float32)}

    def decode(self, message: Message, n: int) -> np.ndarray:
        out = np.empty(n, np.float32)
        factors, whole = np.asarray(message["factors"]), np.asarray(message["whole"])
        fo = wo = 0
        for off, rows, cols, r in self._plan(n):
            if not r:
                out[off : off + rows * cols] = whole[wo : wo + rows * cols]
                wo += rows * cols
                continue
            p = factors[fo : fo + rows * r].reshape(rows, r)
            q = factors[fo + rows * r : fo + r * (rows + cols)].reshape(cols, r)
            fo += r * (rows + cols)
            out[off : off + rows * cols] = (p @ q.T).reshape(-1)
        return out


class ErrorFeedback:
    """A sender's memory of what its compressed messages dropped (one vector per sender, or none)."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.memory: np.ndarray | None = None

    def send(self, v: np.ndarray, rng: np.random.Generator) -> tuple[Message, np.ndarray]:
        """The message for `v` and what the receivers will decode from it; with error feedback the memory is
        added first and keeps what this message drops."""
        c = self.compressor
        x = v if not c.error_feedback or self.memory is None else v + self.memory
        msg = c.encode(np.ascontiguousarray(x, dtype=np.float32), rng)
        decoded = c.decode(msg, len(v))
        if c.error_feedback:
            self.memory = (x - decoded).astype(np.float32)
        return msg, decoded


COMPRESSORS: dict[str, type[Compressor]] = {
    "none": Compressor, "topk": TopK, "randomk": RandomK, "qsgd": QSGD, "sign": Sign, "lowrank": LowRank,
}


class Codec:
    """One agent host's side of compression: per sending agent a generator (seeded from the run's seed and the
    agent, so any host draws the same) and an error-feedback memory; decoding for its receivers."""

    def __init__(self, compressor: Compressor, seed: int, senders, shapes: Sequence[tuple[int, ...]]) -> None:
        self.compressor = compressor
        compressor.setup(shapes)
        self.feedback = {i: ErrorFeedback(compressor) for i in senders}
        self.rngs = {i: np.random.default_rng([seed, i, 7717]) for i in senders}

    def send(self, i: int, v: np.ndarray) -> tuple[Message, np.ndarray]:
        """Agent i's message for vector `v`, and what its receivers will decode."""
        return self.feedback[i].send(v, self.rngs[i])

    def decode(self, message, n: int) -> np.ndarray:
        return self.compressor.decode(message, n) if isinstance(message, dict) else message

    def state(self, i: int) -> dict:
        """What agent i's sending side remembers (for checkpoints: plain values and arrays)."""
        memory = self.feedback[i].memory
        return {"rng": self.rngs[i].bit_generator.state, "memory": None if memory is None else memory.copy()}

    def load(self, i: int, state: dict) -> None:
        self.rngs[i].bit_generator.state = state["rng"]
        memory = state["memory"]
        self.feedback[i].memory = None if memory is None else np.asarray(memory, dtype=np.float32).copy()
