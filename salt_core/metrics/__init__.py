"""World-free measures: a student's semigroup defect and bootstrap intervals.

`semigroup` measures a student's semigroup defect from a caller-supplied velocity function (docs/method.md §4);
`bootstrap` puts intervals on means (t intervals over training seeds). The toy world's oracle metrics live in the
toy wing
(`comfyui_salt.toy.metrics`), the method lab's exact metrics in `comfyui_salt.toy.lab.metrics`.
"""
from .bootstrap import Interval, bootstrap_ci, seed_t_interval, t_quantile
from .semigroup import semigroup_defect, semigroup_defects, state_defects

__all__ = ["Interval", "bootstrap_ci", "seed_t_interval", "t_quantile", "semigroup_defect", "semigroup_defects",
           "state_defects"]
