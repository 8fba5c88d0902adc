"""Permutation alignment, pure: tensors in, tensors out (no Ray, no I/O, no process groups).

- `PermutationSpec.from_model(model, example)`: which axes permute together, derived by torch.fx
  (`dimat.merge.trace`: labels through every op; heads, stacked gates, concatenations and flattened maps
  as `Axis` layouts, attention heads as blocks) and self-tested; `check_spec` tests a hand-written one;
  `spec_for` takes a model's own `permutation_spec()` when it has one; `coverage` says how much of a
  model a spec moves, `alignment_report` the start-up line when that is little.
- `weight_matching`, `activation_matching` (`activation_matching_many`: several models against one
  reference, whose activations are computed once): permutations mapping another model into a reference's basis.
- `apply_permutation`, `merge`, `align`, `align_many`: use them.
- `reset_bn`: re-estimate BatchNorm statistics after a merge.
- REPAIR (`dimat.merge.repair`): `repair_points`, `channel_stats`, `interpolate`, `repair_merged` give the
  merged model's channels the interpolated mean and std of the endpoints'.
"""

from dimat.merge.permute import (
    Perm, activation_matching, activation_matching_many, align, align_many, apply_permutation, merge, reset_bn,
    weight_matching,
)
from dimat.merge.repair import RepairError, RepairPoint, channel_stats, interpolate, repair_merged, repair_points
from dimat.merge.spec import (
    Axis, PermutationSpec, Site, Span, SpecError, alignment_report, check_spec, coverage, random_permutation, spec_for,
)

__all__ = [
    "Axis", "Perm", "PermutationSpec", "RepairError", "RepairPoint", "Site", "Span", "SpecError",
    "activation_matching", "activation_matching_many", "align", "align_many", "alignment_report", "apply_permutation",
    "channel_stats", "check_spec", "coverage", "interpolate", "merge", "random_permutation", "repair_merged",
    "repair_points", "reset_bn", "spec_for", "weight_matching",
]
