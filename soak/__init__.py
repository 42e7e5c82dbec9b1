"""A randomized fault soak: an open-loop mix of requests, faults from a seeded schedule, and
a checker of promises over the whole recorded history (``python -m soak``, ``make soak``)."""
