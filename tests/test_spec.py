"""The spec obeys the math, and so do the kernels.

Each property is checked on the NumPy spec (the definition) and on the compiled
build, so a kernel that matches a wrong spec would still be caught here.
"""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ppo_core
import ppo_core_spec as spec

IMPLS = {"spec": spec, "kernel": ppo_core}
impls = pytest.mark.parametrize("impl", list(IMPLS.values()), ids=list(IMPLS))

finite = st.floats(-100, 100, allow_nan=False, width=64)


@st.composite
def consistent_rollouts(draw, max_t=30, max_n=4):
    """A rollout where next_values[t] == values[t+1] whenever step t did not end an
    episode and t < T-1; at done steps next_values holds V of the final observation."""
    T = draw(st.integers(1, max_t))
    N = draw(st.integers(1, max_n))
    shape = (T, N)
    r = draw(hnp.arrays(np.float64, shape, elements=finite))
    v = draw(hnp.arrays(np.float64, shape, elements=finite))
    final = draw(hnp.arrays(np.float64, shape, elements=finite))
    last = draw(hnp.arrays(np.float64, (N,), elements=finite))
    term = draw(hnp.arrays(np.bool_, shape))
    trunc = draw(hnp.arrays(np.bool_, shape))
    done = term | trunc
    nv = np.where(done, final, np.concatenate([v[1:], last[None]], axis=0))
    return r, v, nv, term, trunc


def tol(T):
    # float64 recursions over at most T steps of values bounded by 100: rounding
    # error stays far below this.
    return 1e-9 * (T + 1) * 100


gammas = st.floats(0, 1)


@impls
@given(ro=consistent_rollouts(), gamma=gammas)
def test_lambda_zero_gives_td_error(impl, ro, gamma):
    r, v, nv, term, trunc = ro
    adv, ret = impl.gae(r, v, nv, term, trunc, gamma=gamma, lam=0.0)
    delta = r + gamma * np.where(term, 0.0, nv) - v
    np.testing.assert_allclose(adv, delta, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ret, adv + v, rtol=0, atol=1e-9)


@impls
@given(ro=consistent_rollouts(), gamma=gammas)
@example(ro=(np.ones((3, 1)), np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 1), bool),
             np.zeros((3, 1), bool)), gamma=1.0)
def test_lambda_one_gives_bootstrapped_returns(impl, ro, gamma):
    r, v, nv, term, trunc = ro
    adv, ret = impl.gae(r, v, nv, term, trunc, gamma=gamma, lam=1.0)
    G = impl.discounted_returns(r, term, trunc, nv, gamma=gamma)
    np.testing.assert_allclose(ret, G, rtol=0, atol=tol(len(r)))
    np.testing.assert_allclose(adv, G - v, rtol=0, atol=tol(len(r)))


@impls
@given(ro=consistent_rollouts(), gamma=gammas, lam=st.floats(0, 1),
       new_rewards=hnp.arrays(np.float64, (30, 4), elements=finite))
def test_rewards_after_done_do_not_change_earlier_advantages(impl, ro, gamma, lam, new_rewards):
    r, v, nv, term, trunc = ro
    done = term | trunc
    T, N = r.shape
    adv, _ = impl.gae(r, v, nv, term, trunc, gamma=gamma, lam=lam)
    G = impl.discounted_returns(r, term, trunc, nv, gamma=gamma)
    for n in range(N):
        ends = np.flatnonzero(done[:, n])
        if len(ends) == 0:
            continue
        cut = ends[0]  # everything after the first episode end is another episode
        r2 = r.copy()
        r2[cut + 1:, n] = new_rewards[cut + 1:T, n]
        v2 = v.copy()
        v2[cut + 1:, n] = -v2[cut + 1:, n] + 7.0
        adv2, _ = impl.gae(r2, v2, nv, term, trunc, gamma=gamma, lam=lam)
        G2 = impl.discounted_returns(r2, term, trunc, nv, gamma=gamma)
        np.testing.assert_array_equal(adv2[: cut + 1, n], adv[: cut + 1, n])
        np.testing.assert_array_equal(G2[: cut + 1, n], G[: cut + 1, n])


@impls
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_terminated_ignores_next_values_truncated_uses_them(impl, lam):
    gamma = 0.9
    r = np.array([1.0, 2.0, 3.0])
    v = np.array([0.5, 0.25, 0.125])
    end = np.array([False, False, True])
    for nv_last in (0.0, 10.0, np.inf, np.nan):
        nv = np.array([0.25, 0.125, nv_last])
        adv_term, ret_term = impl.gae(r, v, nv, end, ~end & False, gamma=gamma, lam=lam)
        assert np.all(np.isfinite(adv_term))
        assert adv_term[2] == pytest.approx(3.0 - 0.125)
        G_term = impl.discounted_returns(r, end, np.zeros(3, bool), nv, gamma=gamma)
        assert G_term[2] == 3.0
    nv = np.array([0.25, 0.125, 10.0])
    adv_trunc, _ = impl.gae(r, v, nv, np.zeros(3, bool), end, gamma=gamma, lam=lam)
    assert adv_trunc[2] == pytest.approx(3.0 + gamma * 10.0 - 0.125)
    G_trunc = impl.discounted_returns(r, np.zeros(3, bool), end, nv, gamma=gamma)
    assert G_trunc[2] == pytest.approx(3.0 + gamma * 10.0)
    assert G_trunc[1] == pytest.approx(2.0 + gamma * G_trunc[2])


@impls
def test_truncated_mid_rollout_cuts_recursion_but_bootstraps(impl):
    # Episode 1 is truncated at t=1 (final observation worth 4), episode 2 starts at t=2.
    r = np.array([1.0, 1.0, 1.0])
    v = np.zeros(3)
    nv = np.array([0.0, 4.0, 2.0])
    trunc = np.array([False, True, False])
    term = np.zeros(3, bool)
    G = impl.discounted_returns(r, term, trunc, nv, gamma=0.5)
    np.testing.assert_allclose(G, [1 + 0.5 * (1 + 0.5 * 4), 1 + 0.5 * 4, 1 + 0.5 * 2])
    adv, _ = impl.gae(r, v, nv, term, trunc, gamma=0.5, lam=1.0)
    np.testing.assert_allclose(adv, G)


@impls
@pytest.mark.parametrize("gamma,lam", [(0.0, 0.0), (0.99, 0.95), (1.0, 1.0)])
def test_one_step_gridworld(impl, gamma, lam):
    # One state, two actions, episode ends after one step. Left pays +2, right -2;
    # under the uniform policy V(s) = 0, so A(left) = +2 and A(right) = -2.
    # Column 0 took left, column 1 took right. next_values is garbage: terminal.
    r = np.array([[2.0, -2.0]])
    v = np.zeros((1, 2))
    nv = np.array([[123.0, -55.0]])
    term = np.ones((1, 2), bool)
    adv, ret = impl.gae(r, v, nv, term, np.zeros((1, 2), bool), gamma=gamma, lam=lam)
    np.testing.assert_array_equal(adv, [[2.0, -2.0]])
    np.testing.assert_array_equal(ret, [[2.0, -2.0]])


@impls
def test_next_values_from_uses_final_observation(impl):
    v = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    last = np.array([4.0, 40.0])
    done = np.array([[False, True], [False, False], [True, False]])
    final = np.full_like(v, -1.0)
    nv = impl.next_values_from(v, last, final_values=final, done=done)
    np.testing.assert_array_equal(nv, [[2.0, -1.0], [3.0, 30.0], [-1.0, 40.0]])
    nv0 = impl.next_values_from(v, last)
    np.testing.assert_array_equal(nv0, [[2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])


@impls
def test_surrogate_matches_hand_computation(impl):
    eps = 0.2
    new = np.log(np.array([1.5, 0.5, 1.1, 1.2]))
    old = np.zeros(4)
    A = np.array([1.0, -1.0, 2.0, -3.0])
    res = impl.clipped_surrogate(new, old, A, clip_coef=eps)
    # ratios 1.5 (A>0: clipped to 1.2), 0.5 (A<0: clipped to 0.8), 1.1, 1.2 (A<0: the
    # unclipped ratio*A is smaller, used)
    objs = [1.2 * 1.0, 0.8 * -1.0, 1.1 * 2.0, 1.2 * -3.0]
    assert res.loss == pytest.approx(-np.mean(objs))
    np.testing.assert_allclose(res.grad, [0.0, 0.0, -2.0 * 1.1 / 4, 3.0 * 1.2 / 4])
    assert res.clip_fraction == pytest.approx(0.5)
    r = np.exp(new)
    assert res.approx_kl == pytest.approx(np.mean(r - 1 - new))


@impls
def test_value_loss_matches_hand_computation(impl):
    v = np.array([1.0, 0.0, 2.0])
    old = np.array([0.0, 0.0, 1.5])
    R = np.array([0.0, 1.0, 3.0])
    res = impl.clipped_value_loss(v, old, R, clip_coef=None)
    assert res.loss == pytest.approx(0.5 * np.mean([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(res.grad, np.array([1.0, -1.0, -1.0]) / 3)
    res = impl.clipped_value_loss(v, old, R, clip_coef=0.2)
    # element 0: v_c = 0.2, (v-R)^2 = 1 > 0.04: unclipped, grad 1/3
    # element 1: v_c = v = 0, tie: unclipped rule, grad -1/3
    # element 2: v_c = 1.7, (v_c-R)^2 = 1.69 > 1: clipped, |v-old| = 0.5 > eps: grad 0
    assert res.loss == pytest.approx(0.5 * np.mean([1.0, 1.0, 1.69]))
    np.testing.assert_allclose(res.grad, [1 / 3, -1 / 3, 0.0])
