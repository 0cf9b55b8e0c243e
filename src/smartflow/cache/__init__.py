"""The response cache (MetaCache): exact and semantic tiers, replay, stats."""
