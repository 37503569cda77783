"""The console's lines for trial events (`tuning.console`), from a config and a rung decision as Ray and ASHA give them."""

from __future__ import annotations

from tuning.console import describe_config, describe_decision


def test_a_started_trial_names_its_searched_values_briefly():
    config = {"batch_size": 16, "learning_rate": 0.012345678, "lr_decay": 1.01e-4, "unfreeze_depth": 2, "seed": 7}
    assert describe_config(config, ["batch_size", "learning_rate", "lr_decay", "unfreeze_depth"]) == \
        "batch_size=16 learning_rate=0.0123 lr_decay=0.000101 unfreeze_depth=2"


def test_a_rung_decision_says_the_score_the_cut_and_the_noise_it_was_judged_with():
    stopped = {"rung": 1, "epoch": 3, "score": 0.62, "cut": 0.7, "margin": 0.065, "decision": "stopped"}
    assert describe_decision(stopped, "val_accuracy") == "rung 1 (epoch 3): val_accuracy 0.620, the cut 0.700 less 0.065 of noise: stopped"
    first = {"rung": 1, "epoch": 1, "score": 0.5, "cut": None, "margin": 0.0, "decision": "continued"}
    assert describe_decision(first, "val_loss") == "rung 1 (epoch 1): val_loss 0.500: continued"
