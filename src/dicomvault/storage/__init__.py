"""Storage tier: bytes by uuid (area) and the compression/MD5 layer above it (accessor)."""
