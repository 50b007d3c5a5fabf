"""Array back ends behind one handle (:mod:`.backend`: NumPy, CuPy; the only module that imports
CuPy) and the strict NumPy back end that enforces CuPy's rules in tests (:mod:`.strict`)."""
