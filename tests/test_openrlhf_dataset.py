"""Our prepared files through OpenRLHF's real SFT dataset: the tokens under its loss mask must be
exactly our prefix ids + end-of-turn (prefix rows) and the whole response + end-of-turn (full rows)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from test_prefix import RESPONSES, fake_sample
from upft.builders import build_upft
from upft.models import end_of_turn_id

openrlhf_datasets = pytest.importorskip("openrlhf.datasets")


@pytest.mark.parametrize("L", [3, 8, 32])
def test_loss_tokens_are_exactly_ours(tok, L):
    from datasets import Dataset

    eot = end_of_turn_id(tok)
    samples = [fake_sample(tok, i, t, "full" if i == 0 else "prefix") for i, t in enumerate(RESPONSES)]
    rows, dropped = build_upft(samples, tok, eot, L)
    assert dropped == 0
    data = SimpleNamespace(input_key="prompt", output_key="response", apply_chat_template=True,
                           tokenizer_chat_template=None)
    strategy = SimpleNamespace(args=SimpleNamespace(data=data))
    ds = openrlhf_datasets.SFTDataset(Dataset.from_list([{"prompt": r["prompt"], "response": r["response"]}
                                                         for r in rows]),
                                      tok, 512, strategy, input_template=None, num_processors=1)
    assert len(ds) == len(rows)
    for i, r in enumerate(rows):
        input_ids, _, loss_mask = ds[i]
        ids, mask = input_ids[0].tolist(), loss_mask[0].tolist()
        # OpenRLHF trains log p(ids[t+1] | ids[:t+1]) where loss_mask[t] == 1 (it shifts by one)
        trained = [ids[t + 1] for t in range(len(ids) - 1) if mask[t]]
        assert trained == r["target_ids"], (r["kind"], tok.decode(trained), tok.decode(r["target_ids"]))
        assert ids[:len(r["prompt_ids"])] == r["prompt_ids"]
    kinds = [r["kind"] for r in rows]
    assert kinds == ["full", "prefix", "prefix"]
    assert rows[0]["target_ids"] == samples[0]["response_ids"] + [eot]
