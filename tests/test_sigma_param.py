"""The sigma parameterisations change exactly the sigma update: one optimiser step against the formula."""
import pytest
import torch

from pwfn_viz.core.sigma_param import GROUP_KEY, SIGMA_PARAMS, stepping_variable, to_step_gradients


def _loss(sigma):
    # any smooth function of sigma with a gradient that differs per entry
    return (torch.tensor([3.0, -2.0, 0.5, 1.0]) * sigma ** 2).sum() + sigma.sum()


def _one_step(param: str, lr: float, momentum: float = 0.0, steps: int = 1):
    sigma = torch.nn.Parameter(torch.tensor([1e-3, 2e-3, 4e-2, 5e-3], dtype=torch.float64))
    opt = torch.optim.SGD([{"params": [sigma], "lr": lr, GROUP_KEY: param}], lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        _loss(sigma).backward()
        to_step_gradients(opt)
        with stepping_variable(opt):
            opt.step()
    return sigma.detach()


def _grad(sigma):
    s = sigma.clone().requires_grad_(True)
    _loss(s).backward()
    return s.grad


def test_raw_is_plain_sgd_on_sigma():
    s0 = torch.tensor([1e-3, 2e-3, 4e-2, 5e-3], dtype=torch.float64)
    got = _one_step("raw", lr=0.1)
    torch.testing.assert_close(got, s0 - 0.1 * _grad(s0), rtol=0, atol=1e-15)


def test_log_is_sgd_on_log_sigma():
    s0 = torch.tensor([1e-3, 2e-3, 4e-2, 5e-3], dtype=torch.float64)
    lr = 50.0
    # rho = log sigma, dL/drho = sigma * dL/dsigma, rho' = rho - lr * dL/drho, sigma' = exp(rho')
    want = torch.exp(torch.log(s0) - lr * s0 * _grad(s0))
    got = _one_step("log", lr=lr)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert (got > 0).all()


def test_log_momentum_lives_in_log_space():
    s0 = torch.tensor([1e-3, 2e-3, 4e-2, 5e-3], dtype=torch.float64)
    lr, m = 20.0, 0.9
    rho, v = torch.log(s0), torch.zeros(4, dtype=torch.float64)
    for _ in range(3):
        g = torch.exp(rho) * _grad(torch.exp(rho))
        v = m * v + g
        rho = rho - lr * v
    torch.testing.assert_close(_one_step("log", lr=lr, momentum=m, steps=3), torch.exp(rho), rtol=1e-12, atol=0)


def test_untouched_entries_keep_their_exact_sigma():
    """A fixed weight (zero gradient) keeps its sigma bit for bit, not exp(log(sigma))."""
    sigma = torch.nn.Parameter(torch.tensor([0.1, 0.3, 1e-3]))
    opt = torch.optim.SGD([{"params": [sigma], "lr": 1.0, GROUP_KEY: "log"}], lr=1.0)
    before = sigma.detach().clone()
    sigma.grad = torch.tensor([0.0, 1.0, 0.0])
    to_step_gradients(opt)
    with stepping_variable(opt):
        opt.step()
    assert sigma[0].item() == before[0].item() and sigma[2].item() == before[2].item()
    assert sigma[1].item() != before[1].item()


def test_registry_lists_and_rejects():
    assert SIGMA_PARAMS.names() == ["log", "raw"]
    with pytest.raises(ValueError, match="unknown sigma parameterisation 'exp'"):
        SIGMA_PARAMS.get("exp")
