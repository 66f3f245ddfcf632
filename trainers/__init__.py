"""TRL entry points over built splits (SFT, DPO, GRPO, reward model).

Empty for now: the trainers issue fills this package. Nothing here is usable yet.
"""
