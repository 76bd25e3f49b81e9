"""Official SELMA3D metrics, the evaluation of a run, leaderboard and ranking."""
