"""`below_autograd`: how the eager (uncompiled) steps and resets run."""

from __future__ import annotations

import contextlib

import torch

# Below autograd's in-place and view bookkeeping (the ADInplaceOrView dispatch key). Nothing in a
# step or reset requires grad (actions are ints, the simulator's constants plain tensors) or is
# modified in place, so that layer has nothing to do, yet it costs ~0.7 us of each ~4 us op at
# small N: 845 -> 704 us per eager step of 4 engines. The tensors made under it are ordinary
# tensors, not inference tensors: models train on them and they can be modified in place
# (tests/test_env_contract.py). Compiled steps do not need it (one kernel call, no per-op cost).
below_autograd = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", contextlib.nullcontext)
