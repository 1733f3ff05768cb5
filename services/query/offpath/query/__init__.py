"""QueryService: answers questions about a CV by vector search over a skills catalog."""
