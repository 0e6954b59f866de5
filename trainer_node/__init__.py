"""trainer_node."""
