"""onecard-central: HQ's MQTT consumer, money ledger, master data and dashboard."""
