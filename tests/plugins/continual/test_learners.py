from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from harness_plugins.continual import DERPP, ER, ERACE, Finetune, Joint, TaER, harness_add_methods

from harness.api import Method
from harness.scenarios.continual import ContinualScenario
from harness.scenarios.continual_protocol import (
    ContinualModel,
    Learner,
    StreamInfo,
    continual_model_class,
)

DIM, TASKS, PER_TASK = 6, 3, 2
STREAM = StreamInfo(TASKS, PER_TASK, (DIM,), epochs=1, batch_size=4, train_sizes=(40,) * TASKS)


class Spec:
    seed = 0


class Ctx:
    spec = Spec()


def make(method: Any, **params: Any) -> tuple[torch.nn.Module, Learner]:
    torch.manual_seed(0)
    model = continual_model_class()(None, DIM, STREAM.num_classes)
    return model, method.make_learner(model, STREAM, method.params(**params), Ctx())


def batch(task: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    y = task * PER_TASK + torch.arange(n) % PER_TASK
    return torch.randn(n, DIM) + y[:, None].float(), y


def run_until(learner: Learner, task: int, steps: int = 10) -> None:
    """Train tasks 0..task-1 and begin ``task``."""
    for t in range(task):
        learner.begin_task(t)
        for _ in range(steps):
            learner.observe(*batch(t), first_pass=True)
        learner.end_task(t)
    learner.begin_task(task)


def test_methods_satisfy_the_protocols() -> None:
    scenario = ContinualScenario()
    methods = harness_add_methods()
    assert [m.name for m in methods] == ["finetune", "joint", "er", "er-ace", "der++", "taer"]
    for method in methods:
        assert isinstance(method, Method) and method.scenarios == ("continual",)
        assert all(callable(getattr(method, a)) for a in scenario.method_protocol)
        model, learner = make(method)
        assert isinstance(model, ContinualModel) and isinstance(learner, Learner)


def test_registering_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "from harness_plugins.continual import harness_add_methods\n"
        "harness_add_methods()\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def head_rows(model: torch.nn.Module, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    return model.head.weight[rows].detach().clone(), model.head.bias[rows].detach().clone()


@pytest.mark.parametrize("task", [1, 2])
def test_default_taer_step_leaves_old_rows_bit_identical(task: int) -> None:
    model, learner = make(TaER(), buffer=30, lr=1.0)
    run_until(learner, task)
    old = slice(0, task * PER_TASK)
    current = slice(task * PER_TASK, (task + 1) * PER_TASK)
    assert len(learner.buffer.sample(10, below=task * PER_TASK)) == 10  # replay will happen
    before_old, before_current = head_rows(model, old), head_rows(model, current)
    learner.observe(*batch(task), first_pass=True)
    after_old, after_current = head_rows(model, old), head_rows(model, current)
    assert all(torch.equal(a, b) for a, b in zip(before_old, after_old, strict=True))
    assert not torch.equal(before_current[0], after_current[0])


def test_detaching_only_the_current_loss_lets_replay_move_old_rows() -> None:
    """The check above can fail: the other TaER reading changes the old rows."""
    model, learner = make(TaER(), buffer=30, lr=1.0, detach="current")
    run_until(learner, 1)
    before = head_rows(model, slice(0, PER_TASK))
    learner.observe(*batch(1), first_pass=True)
    assert not torch.equal(before[0], head_rows(model, slice(0, PER_TASK))[0])


def taer_replay_gradient(weight: str) -> torch.Tensor:
    model, learner = make(TaER(), buffer=30, lr=1.0, weight=weight)
    run_until(learner, 2)
    x, y = torch.zeros(4, DIM), torch.tensor([4, 5, 4, 5])  # zero features: no current grad on W
    learner.observe(x, y, first_pass=False)
    return model.head.weight.grad[4:6].clone()


def test_taer_weighs_replay_by_the_number_of_old_tasks() -> None:
    assert torch.allclose(taer_replay_gradient("old_tasks"), 2 * taer_replay_gradient("one"))


def test_unseen_classes_never_move() -> None:
    for method in (Finetune(), Joint(), ER(), ERACE(), DERPP(), TaER()):
        model, learner = make(method)
        run_until(learner, 1)
        learner.observe(*batch(1), first_pass=True)
        assert torch.count_nonzero(model.head.weight[2 * PER_TASK :]) == 0, method.name


def test_er_ace_current_batch_does_not_push_old_logits_down() -> None:
    model, learner = make(ERACE(), buffer=1)
    run_until(learner, 1, steps=0)
    before = head_rows(model, slice(0, PER_TASK))
    learner.observe(*batch(1), first_pass=True)  # the buffer is empty: no replay
    assert torch.equal(before[0], head_rows(model, slice(0, PER_TASK))[0])


def test_buffer_bytes() -> None:
    row = DIM * 4 + 8
    assert make(Finetune())[1].buffer_bytes() == 0
    for method, per_example in ((ER(), row), (TaER(), row), (DERPP(), row + 4 * TASKS * PER_TASK)):
        _, learner = make(method, buffer=12)
        run_until(learner, 1)
        assert learner.buffer.size == 12 and learner.buffer_bytes() == 12 * per_example
    _, joint = make(Joint())
    run_until(joint, 1, steps=3)
    assert joint.buffer_bytes() == 3 * 4 * row  # every example it was shown


def test_joint_makes_epochs_over_everything_seen_so_far() -> None:
    stream = StreamInfo(3, PER_TASK, (DIM,), epochs=1, batch_size=4, train_sizes=(40, 20, 40))
    model = continual_model_class()(None, DIM, stream.num_classes)
    learner = Joint().make_learner(model, stream, Joint.params(), Ctx())
    steps = []
    learner.step = lambda loss: steps.append(1)
    for task, calls in ((0, 10), (1, 5), (2, 10)):
        learner.begin_task(task)
        before = len(steps)
        for _ in range(calls):
            learner.observe(*batch(task), first_pass=True)
        steps_per_call = (len(steps) - before) / calls
        assert steps_per_call == sum(stream.train_sizes[: task + 1]) / stream.train_sizes[task]


def test_a_buffer_larger_than_the_stream_is_an_error() -> None:
    with pytest.raises(ValueError, match="more examples than the stream"):
        make(ER(), buffer=121)
