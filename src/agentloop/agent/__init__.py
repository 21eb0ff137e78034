"""The coding agent: the protocol in `base`, models, tools and policy."""
