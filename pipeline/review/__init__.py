"""Reviews: people's verdicts on incidents become labels (store, label rules, the reviewer's actions, the page)."""
