"""Where the randomness that a privacy proof relies on comes from.

A differential-privacy guarantee holds against an adversary who knows everything (the code, the config, the
seed, every other patient) *except the noise*. The noise therefore cannot be a function of anything public:
if the DP-SGD noise, the Poisson batches, the slice choice or the input / functional / output perturbation
noise were drawn from the run seed, which is in config.yaml and in every path, an adversary could retrain
both hypotheses ("target patient in" / "out") with that seed and compare the result with the released
weights bit for bit (the known-seed attack; `tests/test_randomness.py` carries it out).

Two settings (config ``privacy.randomness``):

- ``secret`` (default): every privacy mode instance, i.e. every run, class generator and epsilon, draws its
  own 128-bit root from the operating system (`secrets.randbits`). The mode's random streams (noise, sampling,
  slice choice, one per network) are derived from that root with NumPy's `SeedSequence` (independent streams
  for distinct stream names and indices). The root lives only in memory and in the private resume file
  (`resume*.pt`, removed when the run completes), so an interrupted run still resumes exactly; it is never
  written to a path, a ledger, a log or a released file. Two runs of the same config are *not* identical.
- ``deterministic`` (tests, CI): the root is the public run seed, so the same seed gives bit-identical
  results. Such a run is **not a DP release**: its ledger says ``randomness: deterministic`` and
  ``dp_release: false``, and tables and figures say so.

What is *not* drawn from the root: weight initialisation, generator latents, diffusion timesteps and noise,
and sampling latents. The privacy proofs condition on them (they are independent of the data), so they may be
public, and they stay seeded from the run seed in both settings.

The streams come from NumPy's / PyTorch's generators (PCG64, Mersenne Twister, Philox), seeded from the
secret; like Opacus with ``secure_mode=False`` these are not cryptographically secure generators, and
floating-point attacks on the noise (Mironov, CCS 2012) are not addressed.

>>> a, b = stream_seed(12345, "noise"), stream_seed(12345, "sampling")
>>> a != b and a == stream_seed(12345, "noise") and 0 <= a < 2**63
True
"""

from __future__ import annotations

import secrets
import zlib

import numpy as np

RANDOMNESS = ("secret", "deterministic")
SECRET_BITS = 128


def new_secret() -> int:
    """A fresh root of `SECRET_BITS` bits from the operating system's CSPRNG."""
    return secrets.randbits(SECRET_BITS)


def check_randomness(randomness: str) -> str:
    if randomness not in RANDOMNESS:
        raise ValueError(f"privacy.randomness must be one of {RANDOMNESS}; got {randomness!r}")
    return randomness


def stream_seed(root: int, stream: str, index: int = 0) -> int:
    """A 63-bit seed for the random stream `stream` (e.g. "noise", "sampling") of network / player `index`,
    derived from `root` (any non-negative integer, e.g. a 128-bit secret) by `numpy.random.SeedSequence`:
    distinct (stream, index) pairs give independent streams, and nothing about `root` can be learnt from
    one stream's output short of inverting the hash. 63 bits fit every generator's seed range
    (`torch.Generator.manual_seed` takes at most 64)."""
    if root < 0:
        raise ValueError(f"a random root must be a non-negative integer; got {root}")
    key = (zlib.crc32(stream.encode()), int(index))
    state = np.random.SeedSequence(int(root), spawn_key=key).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
