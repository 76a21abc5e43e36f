"""pwfn_viz: probabilistic weight fixing, recorded and visualised."""
