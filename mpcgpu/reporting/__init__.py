"""What jobs report beyond their results: the network projection of measured runs
(:mod:`.netmodel`) and PNG figures (:mod:`.plots`)."""
