"""The ring Z_2^64 and its exact products: the fixed-point encoding (:mod:`.encoding`), window
geometry of convolutions and pooling (:mod:`.geometry`), the products themselves
(:mod:`.products`: matrix products, convolutions and their transposes, bit-exact), computed by
float64 limbs (:mod:`.limbs`) or native integer kernels (:mod:`.native`), the kernel chosen per
machine (:mod:`.choice`).  Knows nothing of sharing, protocols or networks."""
