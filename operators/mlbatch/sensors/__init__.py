"""What `wait_for_data` waits for: objects and markers, completeness checks (see `wait:` in the spec)."""
