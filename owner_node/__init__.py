"""owner_node."""
