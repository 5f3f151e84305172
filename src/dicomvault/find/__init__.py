"""Find: read-side business rules (resource descriptions, lookups)."""
