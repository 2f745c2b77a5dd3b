"""Multi-vector primitives shared by the models and the index: the one exact
MaxSim kernel (:mod:`ragged.multivector.maxsim`) and where a page's image
patches sit among its vectors (:mod:`ragged.multivector.grid`).

A leaf: it imports NumPy and torch, nothing of ragged's, so both the
embedders (scoring, heat-maps) and the index (search) can use it."""
