"""Modal screens: help, prompts, the can't-open message."""
