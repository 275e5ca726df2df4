"""Training losses in paper notation (docs/method.md §1–3), pure tensor code: predictions in, (loss, stats) out.

- `dmd`: DMD generator loss, critic flow loss, flow matching, score timesteps, standard-form CFG.
- `semigroup`: the SC-DMD triplet rule and the semigroup regulariser L_SC.
- `alignment`: the cache-conditioned spatial token-relation loss L_align and its timesteps.
- `mixed_steps`: the per-iteration step count K and exit index.
Classes return UNWEIGHTED losses and expose `.weight`; the trainer forms
L_DMD + 0.2·1[K=8]·L_SC + 0.1·1[aligned]·L_align. Knows nothing of models, caches or training loops.
"""
from .alignment import FeatureAlignmentLoss, sample_alignment_timesteps, token_relations
from .dmd import DMDLoss, critic_flow_loss, flow_matching_loss, real_x0_with_cfg, sample_dmd_timesteps
from .mixed_steps import sample_exit_index, sample_rollout_steps
from .semigroup import (SemigroupLoss, Triplet, default_training_sigmas, sc_triplet,
                        sc_triplet_distribution)

__all__ = ["FeatureAlignmentLoss", "sample_alignment_timesteps", "token_relations", "DMDLoss", "critic_flow_loss",
           "flow_matching_loss", "real_x0_with_cfg", "sample_dmd_timesteps", "sample_exit_index",
           "sample_rollout_steps", "SemigroupLoss", "Triplet", "default_training_sigmas", "sc_triplet",
           "sc_triplet_distribution"]
