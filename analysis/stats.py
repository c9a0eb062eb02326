"""Small-sample statistics for seeds, as the analysis uses them: mean, standard
deviation, t-based 95% intervals and Welch's t-test.

Defined once in `search_spaces.stats` (one layer down, so the onset design's decisions in
`search_spaces.onset` and the report's findings apply the same test); re-exported here,
where the analysis has always imported them from.
"""

from search_spaces.stats import (Comparison, Summary, compare_greater, difference_interval,
                                 holm, scipy_available, summarize, t_quantile, welch,
                                 welch_two_sided)

__all__ = ["Comparison", "Summary", "compare_greater", "difference_interval", "holm",
           "scipy_available", "summarize", "t_quantile", "welch", "welch_two_sided"]
