"""relayctl's command groups, one module each; ``relayctl.main`` wires them."""
