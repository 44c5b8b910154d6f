"""Test support: pytest fixtures, the one polling helper, the load driver of the chaos tests."""
