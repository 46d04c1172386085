"""qgeom.train: the schedule, the training loop (deterministic, pure, QAT), heads and evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qgeom import params as P
from qgeom.data import make_task
from qgeom.models import create_model
from qgeom.quant import QuantSpec, ptq
from qgeom.train import (
    TrainConfig,
    accuracy,
    finetune,
    fit,
    fit_task,
    learning_rate,
    logits,
    loss,
    make_optimizer,
    pretrain,
    qat,
    with_fresh_head,
)

SMALL = dict(embed_dim=16, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def task():
    return make_task("hue", seed=0, n_train=256, n_val=64, n_test=128)  # 6 colour classes


@pytest.fixture(scope="module")
def model(task) -> nn.Module:
    return create_model("micro", task.num_classes, seed=0, **SMALL)


@pytest.fixture(scope="module")
def theta(model) -> P.Params:
    return P.from_model(model)


def few_batches(task, n=3, bs=16):
    return [(task.train.x[i * bs : (i + 1) * bs], task.train.y[i * bs : (i + 1) * bs]) for i in range(n)]


def assert_same(a: P.Params, b: P.Params) -> None:
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# schedule and config
# --------------------------------------------------------------------------------------------


def test_learning_rate_warm_up_then_cosine():
    lr, steps, w = 1.0, 110, 10
    sched = [learning_rate(i, steps, lr, w) for i in range(steps + 1)]
    assert sched[0] == pytest.approx(0.1) and sched[4] == pytest.approx(0.5) and sched[w - 1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(sched[:w - 1], sched[1:w]))  # linear, increasing
    assert sched[w] == 1.0  # cosine starts at the peak
    assert sched[w + 50] == pytest.approx(0.5)  # half-way through the decay
    assert sched[steps] == pytest.approx(0.0, abs=1e-15)  # ends at 0
    assert 0 < sched[steps - 1] < 1e-3
    assert all(b <= a for a, b in zip(sched[w:], sched[w + 1 :]))  # non-increasing after warm-up
    assert learning_rate(500, steps, lr, w) == pytest.approx(0.0, abs=1e-15)  # clamped past the end
    assert learning_rate(0, 10, 3e-4, 0) == 3e-4  # no warm-up
    assert learning_rate(5, 10, 2.0, 0) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_train_config_and_optimizers(theta):
    cfg = TrainConfig()
    assert cfg.with_(steps=3).steps == 3 and cfg.steps == 200
    assert cfg.to_dict()["weight_decay"] == 0.1 and cfg.to_dict()["optimizer"] == "adamw"
    ps = [nn.Parameter(torch.ones(2))]
    assert isinstance(make_optimizer("adamw", ps, 1e-3, 0.1), torch.optim.AdamW)
    assert isinstance(make_optimizer("sgd", ps, 1e-3, 0.1), torch.optim.SGD)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; known: adamw, sgd"):
        make_optimizer("adam", ps, 1e-3, 0.1)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def test_fit_is_deterministic_and_pure(model, theta, task):
    before_params = {k: v.clone() for k, v in theta.items()}
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    data = few_batches(task)
    a = fit(model, theta, data, steps=5, lr=1e-2, warmup_steps=2, seed=3)
    b = fit(model, theta, data, steps=5, lr=1e-2, warmup_steps=2, seed=3)
    assert_same(a, b)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], theta["blocks.0.attn.qkv.weight"])  # it trained
    assert_same(theta, before_params)
    assert_same(model.state_dict(), before_model)
    # another batch order gives other weights
    c = fit(model, theta, data[::-1], steps=5, lr=1e-2, warmup_steps=2, seed=3)
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_fit_task_is_deterministic_for_a_config(model, theta, task):
    cfg = TrainConfig(steps=4, batch_size=16, lr=1e-2, warmup_steps=1, seed=1)
    assert_same(fit_task(model, theta, task.train, cfg), fit_task(model, theta, task.train, cfg))
    other = fit_task(model, theta, task.train, cfg.with_(seed=2))  # another data order
    assert not torch.equal(other["head.weight"], fit_task(model, theta, task.train, cfg)["head.weight"])


def test_fit_reduces_the_loss_on_a_learnable_task(model, theta, task):
    # 40 AdamW steps on the colour task: test loss 1.80 (≈ ln 6) → 1.08, accuracy 0.15 → 0.58
    # (deterministic on CPU; the thresholds leave room for other BLAS builds)
    cfg = TrainConfig(steps=40, batch_size=32, lr=1e-2, warmup_steps=2)
    trained = fit_task(model, theta, task.train, cfg)
    l0, l1 = loss(model, theta, task.test), loss(model, trained, task.test)
    assert l1 < 0.8 * l0
    assert accuracy(model, trained, task.test) > 0.35  # chance is 1/6


def test_fit_with_sgd_and_more_steps_than_batches(model, theta, task):
    out = fit(model, theta, few_batches(task, n=2), steps=5, lr=1e-2, optimizer="sgd", clip_grad_norm=None)
    assert list(out) == list(theta) and not torch.equal(out["head.bias"], theta["head.bias"])


def test_qat_fit_returns_the_fp_keys(model, theta, task):
    spec = QuantSpec(2)
    q = fit(model, theta, few_batches(task), steps=4, lr=1e-2, qat_spec=spec)
    fp = fit(model, theta, few_batches(task), steps=4, lr=1e-2)
    assert list(q) == list(theta) and all(q[k].shape == theta[k].shape and q[k].dtype == theta[k].dtype for k in q)
    # the fake quantization changes the gradients, so the weights differ from FP training
    assert not torch.equal(q["blocks.0.mlp.fc1.weight"], fp["blocks.0.mlp.fc1.weight"])
    assert_same(q, fit(model, theta, few_batches(task), steps=4, lr=1e-2, qat_spec=spec))
    # the caller's model is not left with QAT layers
    assert not any(type(m).__name__ == "QATLinear" for m in model.modules())


def test_non_finite_initial_weights_are_refused(model, theta, task):
    bad = {**theta, "norm.weight": torch.full_like(theta["norm.weight"], float("nan"))}
    with pytest.raises(P.NonFiniteParamsError, match="initial weights hold NaN or Inf values in: norm.weight"):
        fit(model, bad, few_batches(task), steps=1)
    inf = {**theta, "cls_token": torch.full_like(theta["cls_token"], float("inf"))}
    with pytest.raises(P.NonFiniteParamsError, match="cls_token"):
        fit_task(model, inf, task.train, TrainConfig(steps=1, batch_size=8))


def test_a_non_finite_loss_stops_training(model, theta, task):
    x, y = few_batches(task, n=1)[0]
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        fit(model, theta, [(x, y)], steps=1)


# --------------------------------------------------------------------------------------------
# heads, stages, evaluation
# --------------------------------------------------------------------------------------------


def test_with_fresh_head_keeps_the_backbone(theta):
    other = create_model("micro", 9, seed=1, **SMALL)
    out = with_fresh_head(other, theta, seed=4)
    assert list(out) == list(P.from_model(other))
    for k in P.scope_keys(theta, "backbone"):
        assert torch.equal(out[k], theta[k]) and out[k] is not theta[k]
    assert out["head.weight"].shape == (9, 16) and torch.equal(out["head.bias"], torch.zeros(9))
    assert 0.01 < float(out["head.weight"].std()) < 0.03  # N(0, 0.02²) on 144 entries
    assert torch.equal(with_fresh_head(other, theta, seed=4)["head.weight"], out["head.weight"])
    assert not torch.equal(with_fresh_head(other, theta, seed=5)["head.weight"], out["head.weight"])
    with pytest.raises(KeyError, match="backbone lacks pos_embed"):
        with_fresh_head(other, {k: v for k, v in theta.items() if k != "pos_embed"})


def test_accuracy_and_loss_with_a_spec_are_those_of_the_ptq_weights(model, theta, task):
    trained = fit_task(model, theta, task.train, TrainConfig(steps=10, batch_size=32, lr=1e-2))
    spec = QuantSpec(2)
    q = ptq(trained, spec)
    assert accuracy(model, trained, task.test, spec) == accuracy(model, q, task.test)
    assert loss(model, trained, task.test, spec) == loss(model, q, task.test)
    assert loss(model, trained, task.test, spec) != loss(model, trained, task.test)
    # accuracy is the argmax agreement, computed by hand
    pred = logits(model, q, task.test.x).argmax(-1)
    assert accuracy(model, q, task.test) == pytest.approx(float((pred == task.test.y).float().mean()))


def test_logits_use_the_given_params_in_any_batch_size(model, theta, task):
    other = P.scale(theta, 1.5)
    a = logits(model, other, task.test.x[:10], batch_size=3)
    b = logits(model, other, task.test.x[:10])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # batch size may change BLAS summation order
    assert a.device.type == "cpu"
    assert not torch.allclose(a, logits(model, theta, task.test.x[:10]))  # the model's own weights are θ
    assert all(torch.equal(v.cpu(), theta[k]) for k, v in model.state_dict().items())


def test_pretrain_finetune_qat_stages():
    t = make_task("position", seed=0, n_train=64, n_val=16, n_test=16)
    cfg = TrainConfig(steps=2, batch_size=16, lr=1e-3, warmup_steps=1)
    pre = create_model("micro", 7, seed=0, **SMALL)
    theta0 = pretrain(pre, t, cfg)  # labels 0-3 inside a 7-class head
    assert theta0["head.weight"].shape == (7, 16)
    m = create_model("micro", t.num_classes, seed=0, **SMALL)
    theta_t = finetune(m, theta0, t, cfg)
    assert theta_t["head.weight"].shape == (4, 16) and list(theta_t) == list(P.from_model(m))
    theta_q = qat(m, theta_t, t, QuantSpec(2), cfg)
    assert list(theta_q) == list(theta_t)
    rho = P.quantization_vector(theta_q, theta_t)
    assert P.norm(rho) > 0 and "head.weight" not in rho

