"""Reports: every model of an experiment side by side, as markdown, JSON and one HTML page."""
