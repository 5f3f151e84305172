"""Asynchronous work: the `Job` contract, the jobs engine, and the jobs of the core (archives)."""
