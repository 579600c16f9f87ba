"""mobile-vla: vision-language-action policies for omni-wheel mobile robots."""

__version__ = "0.1.0"
