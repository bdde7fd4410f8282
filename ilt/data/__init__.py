"""Data preparation: Lhotse manifests for corpora, languages, manifest I/O."""
