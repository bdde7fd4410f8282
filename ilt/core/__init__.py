"""Infrastructure under every feature: atomic files, the run-time state, the resume journal, the plugin registry."""
