"""Permutation alignment, pure: tensors in, tensors out (no Ray, no I/O, no process groups).

- `PermutationSpec.from_model(model, example)`: which axes permute together, derived by torch.fx
  and self-tested; `check_spec` tests a hand-written one; `spec_for` takes a model's own
  `permutation_spec()` when it has one.
- `weight_matching`, `activation_matching`: permutations mapping another model into a reference's basis.
- `apply_permutation`, `merge`, `align`, `align_many`: use them.
- `reset_bn`: re-estimate BatchNorm statistics after a merge.
"""

from dimat.merge.permute import (
    Perm, activation_matching, align, align_many, apply_permutation, merge, reset_bn, weight_matching,
)
from dimat.merge.spec import PermutationSpec, SpecError, check_spec, random_permutation, spec_for

__all__ = [
    "Perm", "PermutationSpec", "SpecError", "activation_matching", "align", "align_many", "apply_permutation",
    "check_spec", "merge", "random_permutation", "reset_bn", "spec_for", "weight_matching",
]
