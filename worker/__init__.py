"""tunefleet."""
