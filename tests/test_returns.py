"""Return estimators against values computed by hand."""

import pytest
import torch

from wmil.imagination.returns import ReturnNormalizer, cumulative_discount, lambda_return


def test_lambda_return_by_hand():
    # H = 2, one batch element: r = [1, 2], v = [10, 20, 30], d = [0.5, 0.5], λ = 0.5
    # G_1 = 2 + 0.5 * (0.5 * 30 + 0.5 * 30) = 17
    # G_0 = 1 + 0.5 * (0.5 * 20 + 0.5 * 17) = 10.25
    reward = torch.tensor([[1.0], [2.0]])
    value = torch.tensor([[10.0], [20.0], [30.0]])
    discount = torch.full((2, 1), 0.5)
    torch.testing.assert_close(lambda_return(reward, value, discount, 0.5), torch.tensor([[10.25], [17.0]]))


def test_lambda_extremes():
    reward = torch.tensor([[1.0], [1.0], [1.0]])
    value = torch.tensor([[0.0], [5.0], [6.0], [7.0]])
    d = torch.full((3, 1), 0.9)
    # λ = 0: one-step targets r_k + γ v_{k+1}
    torch.testing.assert_close(lambda_return(reward, value, d, 0.0), torch.tensor([[5.5], [6.4], [7.3]]))
    # λ = 1: Monte Carlo bootstrapped at H: 1 + .9 + .81 + .729 * 7
    torch.testing.assert_close(lambda_return(reward, value, d, 1.0)[0], torch.tensor([1 + 0.9 + 0.81 + 0.729 * 7]))


def test_lambda_return_shape_checks():
    with pytest.raises(AssertionError, match="value must be"):
        lambda_return(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), 0.95)


def test_cumulative_discount():
    d = torch.tensor([[0.5], [0.5], [0.0], [1.0]])
    torch.testing.assert_close(cumulative_discount(d), torch.tensor([[1.0], [0.5], [0.25], [0.0]]))


def test_return_normalizer():
    norm = ReturnNormalizer(decay=0.0)
    assert norm.scale == 1.0
    norm.update(torch.linspace(0, 100, 101))
    assert norm.scale == pytest.approx(90.0)
    norm.update(torch.zeros(10))  # a tiny spread never scales returns up
    assert norm.scale == 1.0
    other = ReturnNormalizer()
    other.load_state_dict(norm.state_dict())
    assert other.range == norm.range
