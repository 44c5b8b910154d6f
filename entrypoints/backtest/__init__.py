"""`bulwark backtest`: a strategy replayed on real recordings in one process on a simulated clock."""
