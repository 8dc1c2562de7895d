"""Node processes: the mining loop and (later) the consensus/execution pair."""
