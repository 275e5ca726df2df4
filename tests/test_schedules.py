"""Schedules reproduce the published warped step lists (Self Forcing issue #38, docs/method.md §0)."""
import pytest
import torch

from comfyui_salt.salt_core import schedules as S


def test_warped_four_step_list_at_shift_5_matches_the_published_numbers():
    t = S.warp_timesteps([1000, 750, 500, 250], 5.0)
    assert torch.allclose(t, torch.tensor([1000, 937.5, 2500 / 3, 625], dtype=torch.float64), atol=1e-9)


def test_eight_step_training_grid_matches_salt_method():
    t = S.warp_timesteps(S.TRAINING_GRID_RAW, 5.0)
    published = [1000, 972.2, 937.5, 892.9, 833.3, 750, 625, 416.7]
    assert torch.allclose(t, torch.tensor(published, dtype=torch.float64), atol=0.05)
    # the 4-step inference grid is every other 8-grid point
    assert torch.allclose(S.get_sigmas_fewstep(4)[:-1], S.get_sigmas_fewstep(8)[:-1][::2])


def test_causvid_shift_8_row_and_two_step_list():
    assert torch.allclose(S.warp_timesteps([1000, 750, 500, 250], 8.0),
                          torch.tensor([1000, 960, 8000 / 9, 8000 / 11], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(S.get_sigmas_fewstep(2), torch.tensor([1.0, 2500 / 3000, 0.0], dtype=torch.float64))


def test_shift_matches_diffusers_flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    sigmas = torch.linspace(1.0, 0.001, 1000, dtype=torch.float64)
    ours = S.shift_sigma(sigmas, 5.0)
    assert torch.allclose(ours.float(), sched.sigmas[:1000].float(), atol=1e-6)


@pytest.mark.parametrize("nfe", range(1, 9))
def test_every_nfe_from_1_to_8_gives_a_decreasing_list_ending_at_zero(nfe):
    s = S.get_sigmas_fewstep(nfe)
    assert s.dtype == torch.float64 and len(s) == nfe + 1 and s[0] == 1.0 and s[-1] == 0.0
    assert (s[1:] < s[:-1]).all()


@pytest.mark.parametrize("bad", [0, 9, 2.5, -1])
def test_nfe_out_of_range_is_rejected_with_the_range(bad):
    with pytest.raises(ValueError, match="1..8"):
        S.get_sigmas_fewstep(bad)


def test_bad_raw_lists_are_rejected():
    with pytest.raises(ValueError, match="do not include 0"):
        S.get_sigmas_warped([1000, 500, 0])
    with pytest.raises(ValueError, match="decreasing"):
        S.get_sigmas_warped([500, 1000])


def test_x0_velocity_noise_conversions_are_consistent_in_float64():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    sigma = torch.tensor([0.2, 0.5, 0.9]).view(3, 1)
    x_t = S.add_noise(x0, eps, sigma)
    v = eps - x0
    assert torch.allclose(S.x0_from_velocity(x_t, v, sigma), x0, atol=1e-6)
    assert torch.allclose(S.velocity_from_x0(x_t, x0, sigma), v, atol=1e-5)
    assert torch.allclose(S.get_sigmas_uniform(4, 1.0), torch.tensor([1, .75, .5, .25, 0], dtype=torch.float64))


def test_randn_like_draws_from_the_generator_then_takes_xs_dtype_and_device():
    x = torch.zeros(2, 3, 4, dtype=torch.float64)
    a = S.randn_like(x, torch.Generator().manual_seed(7))
    b = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert a.dtype == torch.float64 and a.device == x.device and torch.equal(a, b)
    assert not torch.equal(a, S.randn_like(x, torch.Generator().manual_seed(8)))
    torch.manual_seed(3)
    c = S.randn_like(x, None)
    torch.manual_seed(3)
    assert torch.equal(c, S.randn_like(x, None))   # no generator: the global RNG
