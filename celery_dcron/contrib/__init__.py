"""Optional integrations. Nothing here is imported by the core package."""
