import pytest
import torch
from torch import nn

import mlprune_fx as mp
from mlprune_fx.passes.capture import capture

from conftest import example_inputs, logits_of, tiny_model


def test_capture_matches_eager_and_keeps_dynamic_shapes():
    model = tiny_model("bert").eval()
    gm = capture(model, example_inputs())
    gm.eval()
    for batch, seq in [(1, 5), (4, 31)]:
        inputs = example_inputs(batch, seq, seed=batch)
        torch.testing.assert_close(logits_of(gm(**inputs)), logits_of(model(**inputs)), atol=1e-6, rtol=0)


def test_train_and_eval_switch_dropout_like_the_model():
    model = tiny_model("bert")
    gm = capture(model, example_inputs())
    inputs = example_inputs()
    gm.train()
    a, b = logits_of(gm(**inputs)), logits_of(gm(**inputs))
    assert not torch.allclose(a, b), "dropout should be active in train mode"
    gm.eval()
    a, b = logits_of(gm(**inputs)), logits_of(gm(**inputs))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert model.training, "capture must leave the model's own mode alone"


def test_original_model_is_not_modified():
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = mp.prepare(model, mp.PruningConfig(), example_inputs())
    with torch.no_grad():
        for p in prepared.parameters():
            p.add_(1.0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([1, 2, 3], "must be a dict"),
        ({}, "is empty"),
        ({"input_ids": torch.ones(2, 5, dtype=torch.long), "pixel_values": torch.ones(2, 5)}, "does not accept"),
        ({"input_ids": torch.ones(2, 5)}, "must be integers"),
        ({"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(3, 5, dtype=torch.long)}, "batch size"),
        ({"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 6, dtype=torch.long)}, "sequence length"),
        ({"input_ids": torch.full((2, 5), 10_000, dtype=torch.long)}, "vocabulary"),
        ({"input_ids": torch.ones(2, 1, dtype=torch.long)}, "at least 2 tokens"),
        ({"input_ids": [[1, 2]]}, "must be a torch.Tensor"),
    ],
)
def test_bad_example_inputs_get_clear_errors(inputs, message):
    with pytest.raises(mp.ExampleInputsError, match=message):
        mp.prepare(tiny_model("bert"), mp.PruningConfig(), inputs)


def test_batch_of_one_still_gives_a_dynamic_batch():
    model = tiny_model("bert").eval()
    prepared = mp.prepare(model, mp.PruningConfig(), example_inputs(batch=1)).eval()
    inputs = example_inputs(batch=5)
    torch.testing.assert_close(logits_of(prepared(**inputs)), logits_of(model(**inputs)), atol=1e-5, rtol=0)


def test_example_inputs_that_are_views_do_not_constrain_later_inputs():
    # A data loader's trimmed batch (a column slice) as the example; later batches are whole tensors.
    model = tiny_model("bert").eval()
    wide = example_inputs(batch=3, seq=20)
    prepared = mp.prepare(model, mp.PruningConfig(), {k: v[:, 2:15] for k, v in wide.items()}).eval()
    for inputs in (example_inputs(batch=3, seq=9), {k: v[:, 0:20] for k, v in wide.items()}):
        torch.testing.assert_close(logits_of(prepared(**inputs)), logits_of(model(**inputs)), atol=1e-5, rtol=0)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, input_ids):
        x = self.linear(input_ids.float().unsqueeze(-1).expand(*input_ids.shape, 4))
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture this
            return x
        return -x


class _SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, pixel_values):
        return self.head(self.conv(pixel_values).mean((2, 3)))


def test_untraceable_model_names_class_reason_and_what_to_try():
    with pytest.raises(mp.CaptureError) as err:
        mp.prepare(_DataDependent(), mp.PruningConfig(), {"input_ids": torch.ones(2, 3, dtype=torch.long)})
    text = str(err.value)
    assert "_DataDependent" in text and "Try:" in text


def test_model_with_nothing_prunable_is_rejected():
    with pytest.raises(mp.UnsupportedModelError, match="found nothing to prune in _SmallCNN"):
        mp.prepare(_SmallCNN(), mp.PruningConfig(), {"pixel_values": torch.randn(2, 3, 8, 8)})


def test_preparing_twice_is_refused():
    prepared = mp.prepare(tiny_model("bert"), mp.PruningConfig(), example_inputs())
    with pytest.raises(mp.CaptureError, match="already prepared"):
        mp.prepare(prepared, mp.PruningConfig(), example_inputs())


def test_example_inputs_default_from_the_hf_config():
    prepared = mp.prepare(tiny_model("bert"))
    assert prepared(**example_inputs()).logits.shape == (3, 2)
