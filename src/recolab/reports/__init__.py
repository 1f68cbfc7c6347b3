"""Offline evaluation reports (markdown, JSON) and run comparison."""
