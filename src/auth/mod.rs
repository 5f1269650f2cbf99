//! Authentication: apps, keys, JWTs, channel patterns.
