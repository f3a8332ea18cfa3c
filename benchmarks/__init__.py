"""Speed measurements: each benchmark runs a baseline and ours in the same run and reports the ratio."""
