"""Models on disk: the backbones' shared base, hub references, lineage, adapters, model cards, conversion, export, generation rules, language-ID embeddings."""
