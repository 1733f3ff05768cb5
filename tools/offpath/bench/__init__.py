"""``make bench``: the performance contract as cells, each with its goal and
met / missed, measured side by side in one run (QueryService with analytics
off, in the background with each sender, with SQS slow or unreachable, and
blocking), by a load generator that reports its own lateness."""
