"""Process and file plumbing shared by every layer: files written whole (:mod:`.atomic`,
:mod:`.hdf5`, :mod:`.results`), progress lines (:mod:`.progress`), memory figures
(:mod:`.memstat`), last words of a dying rank (:mod:`.crashreport`) and fault injection for
tests (:mod:`.faults`)."""
