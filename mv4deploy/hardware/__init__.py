"""Hardware profiles: what a machine is (tiers, links, formats), as data loaded from YAML."""
