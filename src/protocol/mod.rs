//! The wire vocabulary: client message parsing and server frame encoding (sans-IO).
