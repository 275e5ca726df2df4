"""Losses follow docs/method.md §1–4: DMD, critic flow loss, the SC triplet rule and L_SC, the semigroup
defect, the token-relation alignment loss and the mixed-step draws. Expected values are computed here
independently (hand tables, literal two-branch formulas, cosine_similarity) rather than by our helpers."""
import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_salt.salt_core import build_model
from comfyui_salt.salt_core.losses import (DMDLoss, FeatureAlignmentLoss, SemigroupLoss, Triplet, critic_flow_loss,
                                           flow_matching_loss, real_x0_with_cfg, sample_alignment_timesteps,
                                           sample_dmd_timesteps, sample_exit_index, sample_rollout_steps, sc_triplet,
                                           sc_triplet_distribution)
from comfyui_salt.salt_core.metrics import semigroup_defect, semigroup_defects, state_defects
from comfyui_salt.salt_core.schedules import add_noise, get_sigmas_fewstep

from helpers import assert_close

SHAPE = (2, 3, 2, 4, 5)  # (B, C, F, H, W)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- DMD

def test_dmd_gradient_on_the_student_sample_is_fake_minus_real_over_normaliser_over_numel():
    x = _randn(*SHAPE, seed=1).requires_grad_(True)
    cond, uncond, fake = _randn(*SHAPE, seed=2), _randn(*SHAPE, seed=3), _randn(*SHAPE, seed=4)
    g = 4.0
    loss, stats = DMDLoss(guidance_scale=g)(x, cond, uncond, fake)
    loss.backward()
    assert loss.dtype == torch.float64
    real = uncond.double() + g * (cond.double() - uncond.double())
    normaliser = torch.stack([(x[b].detach().double() - real[b]).abs().mean() for b in range(SHAPE[0])])
    grad = (fake.double() - real) / normaliser.view(-1, 1, 1, 1, 1)
    assert_close(x.grad, grad / x.numel(), rtol=1e-6, what="dL/dx")
    assert math.isclose(loss.item(), 0.5 * grad.pow(2).mean().item(), rel_tol=1e-9)
    assert math.isclose(stats["dmd_normaliser"], normaliser.mean().item(), rel_tol=1e-9)
    assert math.isclose(stats["dmd_grad_norm"], grad.abs().mean().item(), rel_tol=1e-9)
    assert all(isinstance(v, float) for v in stats.values())


def test_self_forcing_cfg_form_equals_standard_form_with_scale_plus_one():
    cond, uncond = _randn(*SHAPE, seed=5), _randn(*SHAPE, seed=6)
    for g_sf in (0.0, 3.0, 5.0):
        self_forcing = cond.double() + g_sf * (cond.double() - uncond.double())
        assert_close(real_x0_with_cfg(cond, uncond, g_sf + 1.0), self_forcing, rtol=1e-12, what=f"g_SF={g_sf}")


def test_non_finite_scores_give_finite_loss_and_gradients_and_leave_other_entries_alone():
    x = _randn(*SHAPE, seed=7).requires_grad_(True)
    cond, uncond, fake = _randn(*SHAPE, seed=8), _randn(*SHAPE, seed=9), _randn(*SHAPE, seed=10)
    fake[0, 0, 0, 0, 0] = float("nan")
    fake[0, 1, 0, 0, 0] = float("inf")
    cond[1, 2, 1, 3, 4] = float("-inf")   # poisons sample 1's normaliser: the whole sample carries no signal
    loss, stats = DMDLoss(4.0)(x, cond, uncond, fake)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    zeroed = torch.zeros(SHAPE, dtype=torch.bool)
    zeroed[0, 0, 0, 0, 0] = zeroed[0, 1, 0, 0, 0] = True
    zeroed[1] = True
    assert (x.grad[zeroed] == 0).all() and (x.grad[~zeroed] != 0).all()
    assert stats["dmd_nonfinite_frac"] > 0


def test_a_vanishing_normaliser_is_clamped_instead_of_dividing_by_zero():
    x = _randn(*SHAPE, seed=11).requires_grad_(True)
    fake = _randn(*SHAPE, seed=12)
    loss, _ = DMDLoss(4.0, normaliser_min=1e-5)(x, x.detach(), x.detach(), fake)   # real == x
    loss.backward()
    assert_close(x.grad, (fake.double() - x.detach().double()) / 1e-5 / x.numel(), rtol=1e-6)


def test_dmd_loss_names_the_mismatched_prediction():
    x = _randn(*SHAPE)
    with pytest.raises(ValueError, match="x0_fake"):
        DMDLoss()(x, x, x, x[:1])


def test_dmd_timesteps_are_shifted_integers_clamped_to_20_980_and_seeded():
    t = sample_dmd_timesteps(20000, _gen(0))
    assert t.dtype == torch.float64 and t.shape == (20000,)
    assert t.min() >= 20 and t.max() <= 980 and (t == 980).any() and (t == 20).any()
    assert t.median() > 500   # shift 5 pushes mass to high noise (median ≈ 833)
    inner = t[(t > 20) & (t < 980)] / 1000
    raw = 1000 * inner / (5 - 4 * inner)                 # inverse shift: σ = σ'/(s - (s-1)σ')
    assert torch.allclose(raw, raw.round(), atol=1e-6)   # u was an integer in 0..999
    assert torch.equal(sample_dmd_timesteps(64, _gen(3)), sample_dmd_timesteps(64, _gen(3)))
    assert not torch.equal(sample_dmd_timesteps(64, _gen(3)), sample_dmd_timesteps(64, _gen(4)))


def test_flow_matching_loss_is_zero_for_the_exact_velocity_and_float32():
    x0, noise = _randn(*SHAPE, seed=13), _randn(*SHAPE, seed=14)
    assert flow_matching_loss(noise - x0, x0, noise).item() == 0.0
    v = _randn(*SHAPE, seed=15)
    loss = flow_matching_loss(v.double(), x0, noise)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), ((v - noise + x0) ** 2).mean().item(), rel_tol=1e-6)


@pytest.mark.parametrize("per_sample", [False, True])
def test_critic_flow_loss_equals_the_inverse_sigma_squared_weighted_x0_loss(per_sample):
    x, noise, x0_fake = _randn(*SHAPE, seed=16), _randn(*SHAPE, seed=17), _randn(*SHAPE, seed=18)
    sigma = torch.tensor([0.3, 0.9], dtype=torch.float64) if per_sample else 0.4
    s = sigma.view(-1, 1, 1, 1, 1) if per_sample else torch.tensor(sigma)
    x_t = add_noise(x, noise, s)
    weighted_x0 = ((x.double() - x0_fake.double()) ** 2 / s ** 2).mean()
    assert math.isclose(critic_flow_loss(x0_fake, x_t, x, noise, sigma).item(), weighted_x0.item(), rel_tol=1e-5)


# --------------------------------------------------------------------------------- SC triplet rule

# Hand table for the 8-step grid (indices 0..7, 8 = σ 0): exit i -> every allowed (m, e).
# Ends {0,2,4,6,8} strictly below s_{i+1}, the two largest; m strictly between i and e.
ALLOWED = {
    0: {(1, 2), (1, 4), (2, 4), (3, 4)},
    1: {(2, 4), (3, 4), (2, 6), (3, 6), (4, 6), (5, 6)},
    2: {(3, 4), (3, 6), (4, 6), (5, 6)},
    3: {(4, 6), (5, 6), (4, 8), (5, 8), (6, 8), (7, 8)},
    4: {(5, 6), (5, 8), (6, 8), (7, 8)},
    5: {(6, 8), (7, 8)},
    6: {(7, 8)},
}


def test_the_triplet_rule_produces_exactly_the_allowed_combinations_for_every_exit_index():
    sigmas = get_sigmas_fewstep(8, 5.0)
    inference_ends = set(get_sigmas_fewstep(4, 5.0).tolist())          # {s0, s2, s4, s6, 0}
    for i in range(8):
        seen = set()
        for seed in range(300):
            trip = sc_triplet(i, _gen(seed))
            if i == 7:
                assert trip is None
                continue
            seen.add((trip.m_index, trip.e_index))
            assert trip.s_index == i and trip.sigma_s == sigmas[i].item()
            assert trip.sigma_s > trip.sigma_m > trip.sigma_e
            assert trip.sigma_m in sigmas.tolist() and trip.sigma_e in inference_ends
            assert trip.sigma_e < sigmas[i + 1].item()
            below = sorted((e for e in inference_ends if e < sigmas[i + 1].item()), reverse=True)
            assert trip.sigma_e in below[:2]
            assert (trip.sigma_m, trip.sigma_e) == (sigmas[trip.m_index].item(), sigmas[trip.e_index].item())
        if i < 7:
            assert seen == ALLOWED[i], f"exit {i}"


def test_the_end_point_is_uniform_over_the_two_candidates_and_draws_are_seeded():
    ends = [sc_triplet(0, _gen(seed)).e_index for seed in range(1000)]
    assert 0.42 < ends.count(2) / 1000 < 0.58
    g1, g2 = _gen(7), _gen(7)
    assert [sc_triplet(3, g1) for _ in range(20)] == [sc_triplet(3, g2) for _ in range(20)]


def test_the_triplet_distribution_lists_the_allowed_combinations_with_their_draw_frequencies():
    # support: the hand table; probabilities: e uniform over two ends, then m uniform below s_i and above e
    assert sc_triplet_distribution(7) == []
    d0 = {(t.m_index, t.e_index): p for t, p in sc_triplet_distribution(0)}
    assert d0 == pytest.approx({(1, 2): 1 / 2, (1, 4): 1 / 6, (2, 4): 1 / 6, (3, 4): 1 / 6})
    for i in range(7):
        dist = sc_triplet_distribution(i)
        assert {(t.m_index, t.e_index) for t, _ in dist} == ALLOWED[i]
        assert sum(p for _, p in dist) == pytest.approx(1.0)
        sigmas = get_sigmas_fewstep(8, 5.0).tolist()
        assert all(t.s_index == i and (t.sigma_s, t.sigma_m, t.sigma_e) == (sigmas[i], sigmas[t.m_index],
                                                                            sigmas[t.e_index]) for t, _ in dist)
    draws = [sc_triplet(2, _gen(seed)) for seed in range(3000)]   # the sampler agrees with the listed p
    for t, p in sc_triplet_distribution(2):
        assert abs(draws.count(t) / 3000 - p) < 4 * (p * (1 - p) / 3000) ** 0.5
    with pytest.raises(ValueError, match="exit_index=8"):
        sc_triplet_distribution(8)


def test_the_triplet_rule_works_on_another_grid_and_rejects_bad_exit_indices():
    sigmas = get_sigmas_fewstep(8, 3.0)
    trip = sc_triplet(4, _gen(0), sigmas=sigmas)
    assert trip.sigma_s == sigmas[4].item() and trip.sigma_e in (sigmas[6].item(), 0.0)
    with pytest.raises(ValueError, match="exit_index=8"):
        sc_triplet(8, _gen(0))


# ------------------------------------------------------------------------------------ SC loss

class _Velocity(torch.nn.Module):
    """v(x, σ) = w·tanh(x) + σ·c; `extra` is used only by the composed branch's velocity_fn."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.c = torch.nn.Parameter(torch.tensor(0.3))
        self.extra = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, sigma):
        return self.w * torch.tanh(x) + sigma * self.c

    def second(self, x, sigma):
        return self.forward(x, sigma) + self.extra * x


def _literal_sc(x_s, net, trip, symmetric):
    """The spec's two-branch form, written out: direct x̂_e vs composed x̄_e."""
    ss, sm, se = trip.sigma_s, trip.sigma_m, trip.sigma_e
    v1 = net(x_s, ss)
    direct = x_s - (ss - se) * v1
    if symmetric:
        x_m = x_s - (ss - sm) * v1
        composed = x_m - (sm - se) * net.second(x_m, sm)
    else:
        x_m = (x_s - (ss - sm) * v1.detach()).detach()
        with torch.no_grad():
            composed = x_m - (sm - se) * net.second(x_m, sm)
        composed = composed.detach()
    per_sample = ((direct - composed) ** 2).flatten(1).mean(1)
    return ((1 - ss) * per_sample).mean()


def _all_triplets():
    return {sc_triplet(i, _gen(seed)) for i in range(7) for seed in range(60)}


def test_sc_loss_is_exactly_zero_for_a_constant_velocity_field_on_every_triplet():
    c = _randn(*SHAPE, seed=20)
    x_s = _randn(*SHAPE, seed=21)
    for symmetric in (False, True):
        for trip in _all_triplets():
            loss, _ = SemigroupLoss(symmetric=symmetric)(x_s, c.clone(), lambda x, s: c.clone(), trip)
            assert loss.item() == 0.0, trip


@pytest.mark.parametrize("symmetric", [False, True])
def test_sc_loss_matches_the_two_branch_formula_in_value_and_gradient(symmetric):
    trip = Triplet(3, 5, 8, *(get_sigmas_fewstep(8)[[3, 5, 8]].tolist()))
    x_lit = _randn(*SHAPE, seed=22, dtype=torch.float64).requires_grad_(True)
    net_lit = _Velocity().double()
    expected = _literal_sc(x_lit, net_lit, trip, symmetric)
    expected.backward()
    x_s = x_lit.detach().clone().requires_grad_(True)
    net = _Velocity().double()
    loss, stats = SemigroupLoss(symmetric=symmetric)(x_s, net(x_s, trip.sigma_s), net.second, trip)
    loss.backward()
    assert expected.item() > 1e-4
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-10) and stats["sc_loss"] == loss.item()
    assert_close(x_s.grad, x_lit.grad, rtol=1e-10, what="dL/dx_s")
    for name in ("w", "c"):
        assert math.isclose(getattr(net, name).grad.item(), getattr(net_lit, name).grad.item(), rel_tol=1e-10)
    if symmetric:
        assert net.extra.grad is not None and net.extra.grad.abs() > 0   # composed branch reached
    else:
        assert net.extra.grad is None                                  # composed branch is stop-grad


def test_sc_loss_is_positive_for_curved_or_time_dependent_fields_and_weighted_by_one_minus_sigma_s():
    x_s = _randn(*SHAPE, seed=23)
    sc = SemigroupLoss()
    assert sc.weight == 0.2
    trip = sc_triplet(4, _gen(0))
    for field in (lambda x, s: torch.tanh(x) ** 2, lambda x, s: s * torch.ones_like(x)):
        assert sc(x_s, field(x_s, trip.sigma_s), field, trip)[0].item() > 1e-6
    field = lambda x, s: torch.tanh(x) ** 2
    loss, _ = sc(x_s, field(x_s, trip.sigma_s), field, trip)
    ss, sm, se = trip.sigma_s, trip.sigma_m, trip.sigma_e
    direct = x_s.double() - (ss - se) * field(x_s, ss).double()
    x_m = x_s.double() - (ss - sm) * field(x_s, ss).double()
    composed = x_m - (sm - se) * field(x_m.float(), sm).double()
    assert math.isclose(loss.item(), (1 - ss) * ((direct - composed) ** 2).mean().item(), rel_tol=1e-6)
    # at exit 0 (σ_s = 1) the residual is there but its weight 1 - σ_s is 0
    t0 = sc_triplet(0, _gen(0))
    loss0, stats0 = sc(x_s, field(x_s, 1.0), field, t0)
    assert t0.sigma_s == 1.0 and loss0.item() == 0.0 and stats0["sc_rel_defect"] > 1e-3


def test_sc_loss_trains_a_tiny_wan_model_only_through_the_direct_branch():
    model = build_model("tiny", seed=0)
    x_s = _randn(1, 4, 2, 4, 4, seed=24)
    ctx = _randn(1, 8, 32, seed=25)
    trip = sc_triplet(3, _gen(1))
    calls = []

    def velocity_fn(x_m, sigma_m):
        calls.append(torch.is_grad_enabled())
        return model(x_m, torch.full((1,), 1000 * sigma_m), ctx)

    v1 = model(x_s, torch.full((1,), 1000 * trip.sigma_s), ctx)
    loss, stats = SemigroupLoss()(x_s, v1, velocity_fn, trip)
    loss.backward()
    assert calls == [False] and loss.item() > 0 and math.isfinite(stats["sc_rel_defect"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ------------------------------------------------------------------------------ semigroup defect

def test_semigroup_defect_matches_a_hand_computation():
    # v(x, σ) = σ·x on the grid [1, .5, .25, 0]; Ψ^{a→b}(x) = x·(1 - (a-b)·a).
    # (1, .5, .25) at x: direct .25x, composed .5x·(1 - .125) = .4375x -> |.25-.4375|/.75 = .25
    # (.5, .25, 0) at y: direct .75y, composed .875y·.9375 = .8203125y -> .0703125/.25 = .28125
    states = [(1.0, torch.tensor([[2.0, -1.0]])), (0.5, torch.tensor([[3.0, 0.5]])), (0.25, torch.tensor([[1.0, 1.0]]))]
    per = semigroup_defects(lambda x, s: s * x, states)
    assert per.shape == (2, 1)
    assert_close(per[:, 0], torch.tensor([0.25, 0.28125]), rtol=1e-12)
    assert math.isclose(semigroup_defect(lambda x, s: s * x, states), 0.265625, rel_tol=1e-12)


def test_semigroup_defect_is_zero_for_a_constant_field_and_positive_for_a_curved_one():
    sigmas = get_sigmas_fewstep(8)
    states = [(s, _randn(2, 3, 4, seed=30 + k)) for k, s in enumerate(sigmas[:-1].tolist())]
    c = _randn(2, 3, 4, seed=40)
    assert semigroup_defects(lambda x, s: c, states).shape == (7, 2)
    assert semigroup_defect(lambda x, s: c, states) < 1e-12
    assert semigroup_defect(lambda x, s: torch.sin(3 * x) * s, states) > 1e-3
    # an explicit grid with only some states given uses just the triplets those states start
    assert semigroup_defects(lambda x, s: s * x, states[5:6], sigmas=sigmas).shape == (1, 2)
    with pytest.raises(ValueError, match="not a point of the grid"):
        semigroup_defect(lambda x, s: c, [(0.123, c)], sigmas=sigmas)


def test_state_defects_match_hand_computations_for_several_triplets_from_one_state():
    # v(x, σ) = σ·x at x = [2, -1], σ_s = 1: (1, .5, .25) is .25 (above); (1, .75, 0): direct 0·x, composed
    # .75x·(1 - .75·.75) = .328125x -> .328125|x| / |x|; the velocity evaluated 1 + 2 times, not 2 + 2
    calls = []

    def v(x, s):
        calls.append(s)
        return s * x
    x = torch.tensor([[2.0, -1.0]])
    per = state_defects(v, x, 1.0, [(0.5, 0.25), (0.75, 0.0)])
    assert_close(per[:, 0], torch.tensor([0.25, 0.328125], dtype=torch.float64), rtol=1e-12)
    assert calls == [1.0, 0.5, 0.75]
    with pytest.raises(ValueError, match="sigma_s > sigma_m > sigma_e"):
        state_defects(v, x, 0.5, [(0.75, 0.0)])


# ------------------------------------------------------------------------------------ alignment

def _cosines(tokens):
    """(B, F, S, S) cosine matrices by torch's cosine_similarity."""
    return F.cosine_similarity(tokens.unsqueeze(-2), tokens.unsqueeze(-3), dim=-1)


def test_alignment_loss_is_zero_for_identical_features_and_matches_an_independent_hinge():
    stu, ref = _randn(2, 3, 6, 16, seed=50), _randn(2, 3, 6, 16, seed=51)
    align = FeatureAlignmentLoss(delta=0.1, weight=0.1)
    assert align(ref.clone(), ref)[0].item() == 0.0
    loss, stats = align(stu, ref)
    expected = F.relu((_cosines(stu) - _cosines(ref)).abs() - 0.1).mean()
    assert loss.item() > 0.05 and math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    assert align.weight == 0.1 and 0 < stats["align_active_frac"] <= 1


def test_alignment_loss_ignores_relation_changes_below_delta():
    ref = _randn(2, 3, 6, 16, seed=52)
    stu = ref + 0.01 * _randn(2, 3, 6, 16, seed=53)
    change = (_cosines(stu) - _cosines(ref)).abs().max()
    assert 1e-4 < change < 0.1
    assert FeatureAlignmentLoss(delta=0.1)(stu, ref)[0].item() == 0.0
    assert FeatureAlignmentLoss(delta=0.0)(stu, ref)[0].item() > 0


def test_alignment_loss_is_spatial_only_per_frame():
    ref = _randn(1, 2, 5, 8, seed=54)
    q, _ = torch.linalg.qr(_randn(8, 8, seed=55))
    stu = ref.clone()
    stu[:, 0] = ref[:, 0] @ q                      # rotate frame 0: cross-frame cosines change, in-frame ones don't
    assert (torch.einsum("sd,td->st", F.normalize(stu[0, 0], dim=-1), F.normalize(stu[0, 1], dim=-1))
            - torch.einsum("sd,td->st", F.normalize(ref[0, 0], dim=-1), F.normalize(ref[0, 1], dim=-1))).abs().max() > 0.1
    assert FeatureAlignmentLoss()(stu, ref)[0].item() == 0.0


def test_alignment_gradient_reaches_only_the_student_and_flat_tokens_need_frames():
    stu = _randn(2, 12, 16, seed=56).requires_grad_(True)       # (B, F·S, dim) with F=3, S=4
    ref = _randn(2, 12, 16, seed=57).requires_grad_(True)
    align = FeatureAlignmentLoss()
    loss, _ = align(stu, ref, frames=3)
    loss.backward()
    assert ref.grad is None and stu.grad.abs().sum() > 0
    assert math.isclose(loss.item(), align(stu.view(2, 3, 4, 16), ref.view(2, 3, 4, 16))[0].item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="frames"):
        align(stu, ref)


def test_alignment_loss_takes_tiny_wan_features():
    model = build_model("tiny", seed=0)
    x, ctx = _randn(1, 4, 2, 4, 4, seed=58), _randn(1, 8, 32, seed=59)
    t = torch.full((1,), 300.0)
    _, f_stu = model(x, t, ctx, return_features_at=0)
    _, f_ref = model(x + 0.5 * _randn(*x.shape, seed=60), t, ctx, return_features_at=0)
    loss, _ = FeatureAlignmentLoss()(f_stu, f_ref, frames=2)      # tokens (1, 2·2·2, dim)
    assert math.isfinite(loss.item())


def test_alignment_timesteps_lie_in_the_low_noise_band_and_are_seeded():
    t = sample_alignment_timesteps(5000, _gen(0))
    assert t.dtype == torch.float64 and t.min() >= 20 and t.max() < 556 and t.max() > 540
    assert torch.equal(sample_alignment_timesteps(32, _gen(1)), sample_alignment_timesteps(32, _gen(1)))


# --------------------------------------------------------------------------------- mixed steps

def test_mixed_step_frequencies_approach_the_release_probabilities():
    g = _gen(0)
    draws = [sample_rollout_steps(g) for _ in range(20000)]
    for k, p in zip((8, 4, 2), (0.4, 0.4, 0.2)):
        assert abs(draws.count(k) / len(draws) - p) < 0.015, k


def test_identically_seeded_ranks_draw_the_same_steps_and_exit_indices():
    def draws(seed):
        g = _gen(seed)
        out = []
        for _ in range(200):
            k = sample_rollout_steps(g)
            out.append((k, sample_exit_index(k, g)))
        return out

    a = draws(11)
    assert a == draws(11) and a != draws(12)
    assert {i for k, i in a if k == 8} == set(range(8)) and all(0 <= i < k for k, i in a)


def test_mixed_step_sampler_rejects_probabilities_that_do_not_sum_to_one():
    with pytest.raises(ValueError, match="probs"):
        sample_rollout_steps(_gen(0), probs=(0.5, 0.4, 0.2))
    with pytest.raises(ValueError, match="num_steps"):
        sample_exit_index(0, _gen(0))
