"""Pure central logic: ledger, feed, clearing, anomalies, rollouts — no I/O."""
