"""Assistants: named AI personas a room hears, each on its own provider and model."""
